"""The jitted steps: train-state creation, gradients (whole batch or
micro-batches), the train and eval steps, and their jitted, sharded forms
(the inspection step is alexnet_jax.train.inspection's). Pure JAX/Flax: no
input pipeline or TensorFlow import, so the benchmarks run them on machines
with neither; clu (metrics) is imported only by the steps that return its
metrics, so bench/device_check.py builds its step from `gradients` on a GPU
node without clu."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn
from flax.training import train_state

from alexnet_jax.data import augment
from alexnet_jax.model import network
from alexnet_jax.parallel import sharding
from alexnet_jax.platform import machine_defaults
from alexnet_jax.train import optim

if TYPE_CHECKING:
    from alexnet_jax.train import metrics

Batch = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    """Params, optimiser state and step, plus the plateau schedule's bookkeeping.

    `param_axes` (static: no leaf, not checkpointed) are the parameters'
    logical axes, read from the layers when the state is created, from which
    `sharding.state_shardings` lays out the parameters and their optimiser
    buffers under any scheme.
    """

    plateau: optim.PlateauState
    param_axes: sharding.ParamAxes = flax.struct.field(pytree_node=False)


def create_model(config: ml_collections.ConfigDict) -> network.AlexNet:
    return network.AlexNet(**config.model.to_dict())


def _boxed_params(model: network.AlexNet, size: int, seed: int) -> Any:
    """The model's initial parameters, boxed with their logical axes (traced
    under `sharding.with_logical_rules`)."""
    return model.init(jax.random.key(seed), jnp.zeros((1, size, size, 3), jnp.float32), train=False)["params"]


def _state_init(config: ml_collections.ConfigDict, model: network.AlexNet, steps_per_epoch: int):
    """() -> the initial TrainState from `config.seed`; its parameters are
    unboxed here, so checkpoints, optax's masks and summaries see plain arrays."""
    tx = optim.make_optimizer(config.optimizer, steps_per_epoch, tuple(config.frozen))

    def init() -> TrainState:
        boxed = _boxed_params(model, config.model.input_size, config.seed)
        return TrainState.create(
            apply_fn=model.apply,
            params=nn.unbox(boxed),
            tx=tx,
            plateau=optim.PlateauState.create(),
            param_axes=sharding.param_axes(boxed),
        )

    return sharding.with_logical_rules(init, config.model_parallel)


def _placed(abstract: Any, mesh: jax.sharding.Mesh, scheme: str, axes: sharding.ParamAxes | None = None) -> Any:
    """`abstract`'s shapes and dtypes with their shardings (`sharding.state_shardings`)."""
    shardings = sharding.state_shardings(abstract, mesh, scheme, axes)
    return jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract, shardings)


def abstract_train_state(
    config: ml_collections.ConfigDict, model: network.AlexNet, steps_per_epoch: int, mesh: jax.sharding.Mesh
) -> TrainState:
    """The initial train state's shapes, dtypes and shardings on `mesh`, without computing any."""
    return _placed(jax.eval_shape(_state_init(config, model, steps_per_epoch)), mesh, config.model_parallel)


def create_train_state(
    config: ml_collections.ConfigDict, model: network.AlexNet, steps_per_epoch: int, mesh: jax.sharding.Mesh
) -> TrainState:
    """Initialises parameters (from `config.seed`) directly in their sharding
    (`sharding.state_shardings`: each device creates only its own part)."""
    init = _state_init(config, model, steps_per_epoch)
    shardings = sharding.state_shardings(jax.eval_shape(init), mesh, config.model_parallel)
    return jax.jit(init, out_shardings=shardings)()


def abstract_params(config: ml_collections.ConfigDict, model: network.AlexNet, mesh: jax.sharding.Mesh) -> Any:
    """The parameters' shapes, dtypes and shardings (as the train state
    places them), without computing any: the target of a parameters-only restore."""
    init = functools.partial(_boxed_params, model, config.model.input_size, 0)
    boxed = jax.eval_shape(sharding.with_logical_rules(init, config.model_parallel))
    return _placed(nn.unbox(boxed), mesh, config.model_parallel, sharding.param_axes(boxed))


def noise_end_step(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int | None:
    """The step from which colour noise is off (`config.pca_noise_end_epoch`;
    run #145: epoch 67; `optim.epoch_to_step`), or None when it never stops."""
    if config.pca_noise_end_epoch < 0:
        return None
    return optim.epoch_to_step(config.pca_noise_end_epoch, steps_per_epoch)


def _pca_std(std: float, step: jax.Array, end_step: int | None) -> float | jax.Array:
    if end_step is None or std == 0:
        return std
    return jnp.where(step < end_step, std, 0.0)


def step_keys(base_key: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(augmentation, dropout) keys of a step: a function of the step alone."""
    augment_key, dropout_key = jax.random.split(jax.random.fold_in(base_key, step))
    return augment_key, dropout_key


def gradients(
    state: TrainState,
    batch: Batch,
    base_key: jax.Array,
    config: ml_collections.ConfigDict,
    stats: augment.DataStats,
    noise_end_step: int | None = None,
) -> tuple[jax.Array, Any, jax.Array]:
    """The augmented inputs, gradients and logits of the step `state.step` on
        `batch`, in micro-batches of `config.micro_batch_size` when it is set
    (or when machine_defaults picks them).
        Colour noise stops at `noise_end_step` (None: never; see `noise_end_step`).

        Randomness (crops, flips, colour noise, dropout) comes from
        `fold_in(base_key, step)`, so a resumed run draws exactly what an
        uninterrupted one would, and `inspection.inspect_step` sees the step's own draws.
    """
    augment_key, dropout_key = step_keys(base_key, state.step)
    images = augment.train_inputs(
        batch["image"],
        augment_key,
        stats,
        crop=config.model.input_size,
        flip=config.random_flip,
        chunk=config.crop_chunk,
        pca_std=_pca_std(config.pca_noise_std, state.step, noise_end_step),
    )

    def loss_fn(params, images, labels, key):
        logits = state.apply_fn({"params": params}, images, train=True, rngs={"dropout": key})
        # Weight decay lives in the optimiser (docs/paper.md, Update rule), not the loss.
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, logits

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    micro = machine_defaults.micro_batch_size(config)
    if not micro or micro == images.shape[0]:
        (_, logits), grads = grad_fn(state.params, images, batch["label"], dropout_key)
        return images, grads, logits
    return images, *_accumulated_gradients(grad_fn, state.params, images, batch["label"], dropout_key, micro)


def _accumulated_gradients(grad_fn, params: Any, images: jax.Array, labels: jax.Array, key: jax.Array, micro: int):
    """(grads, logits) of the whole batch from micro-batches of `micro` images.

    The mean gradient is the mean of the micro-batches' mean gradients
    (equal sizes; AlexNet has no batch statistics), so only dropout's random
    stream differs from the whole-batch step. Micro-batch j takes every
    k-th example (rows j, j + k, ...), so on a mesh each micro-batch is
    spread over all data-parallel devices like the batch itself.
    """
    num_micro = images.shape[0] // micro

    def interleave(x: jax.Array) -> jax.Array:  # (B, ...) -> (k, B / k, ...), row i to micro-batch i % k
        return jnp.moveaxis(x.reshape(micro, num_micro, *x.shape[1:]), 1, 0)

    # A Python loop (unrolled into one program), not lax.scan: on XLA:CPU a
    # scan over the paper model's micro-batches was far slower (BENCHMARKS.md).
    images_mb, labels_mb = interleave(images), interleave(labels)
    grads, logits = None, []
    for index in range(num_micro):
        (_, logits_mb), grads_mb = grad_fn(params, images_mb[index], labels_mb[index], jax.random.fold_in(key, index))
        grads = grads_mb if grads is None else jax.tree.map(jnp.add, grads, grads_mb)
        logits.append(logits_mb)
    grads = jax.tree.map(lambda g: g / num_micro, grads)
    logits = jnp.stack(logits)
    # Back to the batch's order, so the logits line up with batch["label"].
    return grads, jnp.moveaxis(logits, 0, 1).reshape(images.shape[0], -1)


def train_step(
    state: TrainState,
    batch: Batch,
    base_key: jax.Array,
    *,
    config: ml_collections.ConfigDict,
    stats: augment.DataStats,
    noise_end_step: int | None = None,
) -> tuple[TrainState, metrics.TrainMetrics]:
    """One SGD step on a uint8 batch: augment on device, forward, backward, update."""
    from alexnet_jax.train import metrics  # clu: see the module's docstring

    _, grads, logits = gradients(state, batch, base_key, config, stats, noise_end_step)
    new_state = state.apply_gradients(grads=grads)
    step_metrics = metrics.TrainMetrics.single_from_model_output(
        **metrics.per_example_outputs(logits, batch["label"]),
        learning_rate=optim.current_learning_rate(new_state.opt_state),
    )
    return new_state, step_metrics


def eval_probs(
    params: Any,
    images_uint8: jax.Array,
    *,
    config: ml_collections.ConfigDict,
    model: network.AlexNet,
    stats: augment.DataStats,
) -> jax.Array:
    """Class probabilities of uint8 `resize_size` images: centre crop or the
    10 views (`config.eval_views`; 5 for a net trained without flips), the
    views' softmax outputs averaged."""
    which = augment.effective_views(config.eval_views, config.random_flip)
    views = augment.eval_inputs(images_uint8, stats, crop=config.model.input_size, views=which)
    num_views, batch_size = views.shape[:2]
    logits = model.apply({"params": params}, views.reshape(num_views * batch_size, *views.shape[2:]), train=False)
    return jax.nn.softmax(logits.reshape(num_views, batch_size, -1).astype(jnp.float32)).mean(0)


def eval_step(
    params: Any,
    batch: Batch,
    *,
    config: ml_collections.ConfigDict,
    model: network.AlexNet,
    stats: augment.DataStats,
) -> metrics.EvalMetrics:
    """Metrics of `eval_probs` on a batch; padded examples (mask 0) do not count."""
    from alexnet_jax.train import metrics  # clu: see the module's docstring

    probs = eval_probs(params, batch["image"], config=config, model=model, stats=stats)
    # log of the averaged probabilities: cross-entropy and top-k of the ensemble.
    outputs = metrics.per_example_outputs(jnp.log(probs), batch["label"])
    return metrics.EvalMetrics.single_from_model_output(**outputs, mask=batch["mask"].astype(bool))


def make_train_fn(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    state: TrainState,
    stats: augment.DataStats,
    noise_end: int | None = None,
):
    """The jitted train step of `state`'s model under `config.model_parallel`
    (colour noise off from step `noise_end`, see `noise_end_step`): (state,
    global batch, key) -> (state, replicated metrics). It donates the state
    it is given, which keeps its sharding from step to step."""
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(
        sharding.partitioned(
            functools.partial(train_step, config=config, stats=stats, noise_end_step=noise_end),
            mesh,
            config.model_parallel,
        ),
        donate_argnums=0,
        out_shardings=(state_sharding, sharding.replicated(mesh)),
    )


def make_step_fns(
    config: ml_collections.ConfigDict,
    model: network.AlexNet,
    mesh: jax.sharding.Mesh,
    state: TrainState,
    stats: augment.DataStats,
    noise_end: int | None = None,
):
    """The jitted train and eval steps (`make_train_fn`, `make_eval_fn`)."""
    return make_train_fn(config, mesh, state, stats, noise_end), make_eval_fn(config, model, mesh, stats)


def make_eval_fn(
    config: ml_collections.ConfigDict, model: network.AlexNet, mesh: jax.sharding.Mesh, stats: augment.DataStats
):
    """The jitted `eval_step`, (params, global batch) -> replicated metrics."""
    return jax.jit(
        sharding.partitioned(
            functools.partial(eval_step, config=config, model=model, stats=stats), mesh, config.model_parallel
        ),
        out_shardings=sharding.replicated(mesh),
    )
