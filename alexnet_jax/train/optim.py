"""The paper's update rule as an optax chain, and its step-down learning rate.

docs/paper.md's rule, per weight w with learning rate eps:

    v <- 0.9 v - 0.0005 eps w - eps grad
    w <- w + v

The learning rate sits *inside* the momentum buffer, so a step-down of eps
leaves the velocity already accumulated untouched. `optax.sgd(lr, momentum)`
puts it outside (w <- w - lr * trace(grad)), which rescales the whole buffer
at a drop: a different optimiser. Here: add_decayed_weights -> scale by -eps
-> (biases x2) -> trace(0.9).

The learning rate is an injected hyperparameter (`optax.inject_hyperparams`)
so it can be logged and, for the plateau schedule, lowered by the train loop
after an evaluation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from alexnet_jax import errors
from alexnet_jax.runs.defaults import SCHEDULES

PyTree = Any

# Digits to which epoch * steps_per_epoch is rounded before the ceiling, so
# float error (0.7 * 10 = 7.000000000000001) does not move a step.
_EPOCH_STEP_DIGITS = 6


def epoch_to_step(epoch: float, steps_per_epoch: int) -> int:
    """The step count from which something "from epoch `epoch`" applies, for
    every schedule (learning-rate drops, per-layer changes, the colour
    noise's end) and for `num_epochs`: the first update that starts at or
    after the epoch, ceil(epoch * steps_per_epoch). Update n (0-based, the
    optimiser's count) begins after n batches, at epoch n / steps_per_epoch,
    so no update that began before epoch `epoch` sees the change, and a run
    of `num_epochs=e` ends just before the first update a change at epoch e
    affects. Whole epochs (the paper's configs) give epoch * steps_per_epoch
    exactly, as before; int() and round() disagreed at fractional ones."""
    return math.ceil(round(epoch * steps_per_epoch, _EPOCH_STEP_DIGITS))


def bias_mask(params: PyTree) -> PyTree:
    """True for bias leaves (named 'bias'), False for weights."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "bias", params)


def weight_mask(params: PyTree) -> PyTree:
    return jax.tree.map(lambda is_bias: not is_bias, bias_mask(params))


def _paper_chain(
    learning_rate: float,
    *,
    momentum: float,
    weight_decay: float,
    bias_lr_multiplier: float,
    bias_weight_decay: bool,
    layer_scale: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
    # Without per-layer changes the chain (and its state) is the one runs
    # have always saved, so their checkpoints still restore.
    per_layer = [layer_scale] if layer_scale is not None else []
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=None if bias_weight_decay else weight_mask),
        optax.scale_by_learning_rate(learning_rate),
        optax.masked(optax.scale(bias_lr_multiplier), bias_mask),
        *per_layer,
        optax.trace(decay=momentum, nesterov=False),
    )


def learning_rate_schedule(opt: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule | float:
    """Piecewise: divide by `1/drop_factor` at each of `drop_epochs`.
    Plateau: a constant the train loop lowers (see `plateau_update`)."""
    if opt.schedule == "piecewise":
        boundaries = {epoch_to_step(epoch, steps_per_epoch): opt.drop_factor for epoch in opt.drop_epochs}
        return optax.piecewise_constant_schedule(opt.learning_rate, boundaries)
    if opt.schedule == "plateau":
        return opt.learning_rate
    raise errors.ConfigError(f"optimizer.schedule={opt.schedule!r}: use one of {SCHEDULES}")


class LayerScaleState(NamedTuple):
    count: jax.Array  # updates applied so far (the step)


def layer_lr_multipliers(
    changes: Sequence[tuple[str, float, float]], steps_per_epoch: int
) -> optax.GradientTransformation:
    """Scales each layer's updates by its learning-rate multiplier: 1 until
    its first change, then `multiplier` from `epoch` on, for each (layer,
    epoch, multiplier) of `changes` (run #145: conv1 x0.1 from epoch 67, x0
    from 72). Placed where the learning rate is applied, inside the momentum
    buffer, so a multiplier of 0 from step 0 leaves the layer bit-identical
    (config.frozen), and a later 0 stops its gradient steps while the
    velocity it already has decays, as the 2012 code's epsW = 0 did."""
    by_layer: dict[str, list[tuple[int, float]]] = {}
    for layer, epoch, multiplier in sorted(changes, key=lambda change: change[1]):
        by_layer.setdefault(layer, []).append((epoch_to_step(epoch, steps_per_epoch), float(multiplier)))

    def init(params: PyTree) -> LayerScaleState:
        del params
        return LayerScaleState(count=jnp.zeros([], jnp.int32))

    def update(updates: PyTree, state: LayerScaleState, params: PyTree | None = None):
        del params

        def scale(path, update):
            multiplier = jnp.asarray(1.0, update.dtype)
            for boundary, value in by_layer.get(path[0].key, ()):
                multiplier = jnp.where(state.count >= boundary, jnp.asarray(value, update.dtype), multiplier)
            return update * multiplier

        return jax.tree_util.tree_map_with_path(scale, updates), LayerScaleState(count=state.count + 1)

    return optax.GradientTransformation(init, update)


def make_optimizer(
    opt: ml_collections.ConfigDict, steps_per_epoch: int, frozen: tuple[str, ...] = ()
) -> optax.GradientTransformation:
    """The paper's optimiser from `config.optimizer`, with its per-layer
    learning-rate changes; layers named in `frozen` (config.frozen) get a
    multiplier of 0 from step 0: no gradient step, no weight decay, no
    momentum, so they stay bit-identical."""
    changes = [*opt.layer_lr_changes, *((layer, 0.0, 0.0) for layer in frozen)]
    chain = functools.partial(
        _paper_chain,
        momentum=opt.momentum,
        weight_decay=opt.weight_decay,
        bias_lr_multiplier=opt.bias_lr_multiplier,
        bias_weight_decay=opt.bias_weight_decay,
        layer_scale=layer_lr_multipliers(changes, steps_per_epoch) if changes else None,
    )
    return optax.inject_hyperparams(chain)(learning_rate=learning_rate_schedule(opt, steps_per_epoch))


def current_learning_rate(opt_state: optax.OptState) -> jax.Array:
    """The weights' learning rate the next update uses (biases get x multiplier)."""
    return opt_state.hyperparams["learning_rate"]


def with_learning_rate(opt_state: optax.OptState, learning_rate: float | jax.Array) -> optax.OptState:
    old = opt_state.hyperparams["learning_rate"]
    new = jnp.asarray(learning_rate, old.dtype)
    if hasattr(old, "sharding"):
        new = jax.device_put(new, old.sharding)
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": new})


class PlateauState(struct.PyTreeNode):
    """Bookkeeping of "divide by 10 when validation error stops improving"."""

    best_error: jax.Array  # best validation error so far (inf before the first)
    evals_since_best: jax.Array  # evaluations without improvement
    num_drops: jax.Array  # drops done so far

    @classmethod
    def create(cls) -> PlateauState:
        return cls(
            best_error=jnp.asarray(jnp.inf, jnp.float32),
            evals_since_best=jnp.asarray(0, jnp.int32),
            num_drops=jnp.asarray(0, jnp.int32),
        )


def plateau_update(state: PlateauState, error: float, *, patience: int, max_drops: int) -> tuple[PlateauState, bool]:
    """Records one validation error; returns the new state and whether to drop.

    A drop happens after `patience` evaluations in a row without a new best,
    at most `max_drops` times; the counter restarts after a drop.
    """
    best, waited, drops = float(state.best_error), int(state.evals_since_best), int(state.num_drops)
    if error < best:
        best, waited = error, 0
    else:
        waited += 1
    drop = waited >= patience and drops < max_drops
    if drop:
        drops, waited = drops + 1, 0
    new_state = PlateauState(
        best_error=jnp.asarray(best, jnp.float32),
        evals_since_best=jnp.asarray(waited, jnp.int32),
        num_drops=jnp.asarray(drops, jnp.int32),
    )
    return new_state, drop
