"""The NaN guard: a non-finite loss or parameter stops the run (errors.Diverged)
at the step it shows, before anything non-finite is written or saved.

The host reads each step's loss HOST_LEAD_STEPS steps late (`InFlight`): it
dispatches ahead instead of waiting on every step, and a diverged run still
stops within a few steps."""

from __future__ import annotations

import collections
import math
from typing import Any

import jax
import jax.numpy as jnp

from alexnet_jax import errors
from alexnet_jax.train import metrics

# How many steps the host may dispatch ahead of the last step whose loss it
# has read: the device never waits on the host for that many steps (a GPU
# step of ~5 ms), while a non-finite loss is still caught within a few steps.
HOST_LEAD_STEPS = 3


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def check_loss(step: int, step_metrics: metrics.TrainMetrics) -> None:
    loss = float(step_metrics.loss.compute())
    if not math.isfinite(loss):
        raise errors.Diverged(f"loss is {loss} at step {step}: stopping; checkpoints up to the last good one are kept")


def check_params(params: Any, message: str) -> None:
    """Diverged(`message`) unless every parameter is finite."""
    if not bool(_all_finite(params)):
        raise errors.Diverged(message)


class InFlight:
    """The (step, metrics) of the steps whose loss is not read yet; the last is the newest."""

    def __init__(self) -> None:
        self._steps: collections.deque = collections.deque()

    def add(self, step: int, step_metrics: metrics.TrainMetrics) -> None:
        """A dispatched step; the loss of the one HOST_LEAD_STEPS back is read
        (a device sync on it, long finished)."""
        self._steps.append((step, step_metrics))
        if len(self._steps) > HOST_LEAD_STEPS:
            check_loss(*self._steps.popleft())

    def newest(self) -> metrics.TrainMetrics | None:
        """The newest step's metrics (None before the first step)."""
        return self._steps[-1][1] if self._steps else None

    def check_newest(self) -> None:
        """Reads the newest step's loss (a sync on it): Diverged if it is not finite."""
        if self._steps:
            check_loss(*self._steps[-1])
