"""`images_per_sec` over training steps only: a logging period's wall time
less what its evaluations, inspections, saves and the first step's
compilation took (the step inside the last is not counted either)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import jax
from clu import periodic_actions

clock = time.monotonic  # the period's clock (a module attribute, so a test can replace it)


class TrainingThroughput:
    """Images per second of the training steps since the last `images_per_sec()`."""

    def __init__(self, batch_size: int, report: periodic_actions.ReportProgress | None = None):
        self._batch_size, self._report = batch_size, report
        self._start, self._excluded, self._steps = clock(), 0.0, 0
        self._paused: tuple[float, contextlib.ExitStack] | None = None

    def step_done(self) -> None:
        self._steps += 1

    def pause(self, name: str, pending: Any = None) -> None:
        """From here to `resume()` is not training time (also reported by
        clu's `ReportProgress.timed(name)`). `pending`: the newest step's
        outputs, waited for first, so the steps still running count as training."""
        if pending is not None:
            jax.block_until_ready(pending)
        timed = contextlib.ExitStack()
        if self._report is not None:
            timed.enter_context(self._report.timed(name, wait_jax_async_dispatch=False))
        self._paused = (clock(), timed)

    def resume(self, pending: Any = None) -> None:
        """Training time again, once `pending` (the paused part's outputs) is ready."""
        if pending is not None:
            jax.block_until_ready(pending)
        start, timed = self._paused
        timed.close()
        self._excluded += clock() - start
        self._paused = None

    def images_per_sec(self) -> float | None:
        """The period's rate (the caller has waited for its last step), None
        if it timed no step; starts the next period."""
        now = clock()
        seconds = now - self._start - self._excluded
        rate = self._steps * self._batch_size / seconds if self._steps and seconds > 0 else None
        self._start, self._excluded, self._steps = now, 0.0, 0
        return rate
