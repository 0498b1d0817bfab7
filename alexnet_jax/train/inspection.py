"""What TensorBoard shows of a training step: the step's first augmented
inputs, its weights, gradients and their norms, computed from the same batch
and keys as the step itself (`inspect_step`), and its jitted, sharded form."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections

from alexnet_jax.data import augment
from alexnet_jax.parallel import sharding
from alexnet_jax.train import steps

NUM_INPUT_IMAGES = 8  # augmented inputs an inspection shows


@flax.struct.dataclass
class Inspection:
    """Device-side extras of one training step (see `inspect_step`)."""

    images: jax.Array  # the first augmented inputs with the subtracted mean added back (pixels), NHWC float
    params: Any  # the weights going into the step
    grads: Any  # the step's gradients, shaped like the params
    param_norms: dict[str, jax.Array]  # per parameter, keyed "conv1/kernel"
    grad_norms: dict[str, jax.Array]


def layer_norms(tree: Any) -> dict[str, jax.Array]:
    """The L2 norm of every leaf, keyed by its path ("fc6/kernel")."""
    flat = flax.traverse_util.flatten_dict(dict(tree), sep="/")
    return {path: jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)))) for path, x in flat.items()}


def inspect_step(
    state: steps.TrainState,
    batch: steps.Batch,
    base_key: jax.Array,
    *,
    config: ml_collections.ConfigDict,
    stats: augment.DataStats,
    noise_end_step: int | None = None,
) -> Inspection:
    """What TensorBoard shows of the step `steps.train_step(state, batch, base_key)`
    is about to take: its first inputs, its gradients and the norms, computed
    from the same batch and keys (one extra forward/backward pass). `config`
    must be the step's, its micro_batch_size resolved as the step's was
    (micro_batch.with_micro_batch_size): dropout's stream depends on it."""
    images, grads, _ = steps.gradients(state, batch, base_key, config, stats, noise_end_step)
    # The run's own statistics (mean image or per-channel), not a fixed mean.
    means = augment.train_input_means(
        batch["image"].shape,
        steps.step_keys(base_key, state.step)[0],
        stats,
        crop=config.model.input_size,
        flip=config.random_flip,
        chunk=config.crop_chunk,
    )
    return Inspection(
        images=(images + means)[:NUM_INPUT_IMAGES],
        params=state.params,
        grads=grads,
        param_norms=layer_norms(state.params),
        grad_norms=layer_norms(grads),
    )


def make_inspect_fn(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    stats: augment.DataStats,
    noise_end: int | None = None,
):
    """The jitted `inspect_step`; its outputs are replicated, so every process
    (process 0 writes them) holds them whole, however the model is sharded."""
    return jax.jit(
        sharding.partitioned(
            functools.partial(inspect_step, config=config, stats=stats, noise_end_step=noise_end),
            mesh,
            config.model_parallel,
        ),
        out_shardings=sharding.replicated(mesh),
    )
