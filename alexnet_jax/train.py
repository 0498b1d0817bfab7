"""The training loop: jitted train/eval steps over a TrainState, clu metrics
and writers, orbax checkpoints, resume, NaN guard and exact evaluation."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from clu import periodic_actions
from flax.training import train_state

from alexnet_jax import (
    augment,
    checkpointing,
    data_stats,
    input_pipeline,
    metrics,
    models,
    optim,
    sharding,
    summaries,
    synthetic_data,
)
from alexnet_jax.config_validation import validate_config

Batch = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    """Params, optimiser state and step, plus the plateau schedule's bookkeeping."""

    plateau: optim.PlateauState


def create_model(config: ml_collections.ConfigDict) -> models.AlexNet:
    return models.AlexNet(**config.model.to_dict())


def create_train_state(
    config: ml_collections.ConfigDict, model: models.AlexNet, steps_per_epoch: int, mesh: jax.sharding.Mesh
) -> TrainState:
    """Initialises parameters (from `config.seed`) directly in their sharding
    (`sharding.state_shardings`: each device creates only its own part)."""
    size = config.model.input_size
    tx = optim.make_optimizer(config.optimizer, steps_per_epoch)

    def init() -> TrainState:
        dummy = jnp.zeros((1, size, size, 3), jnp.float32)
        params = model.init(jax.random.key(config.seed), dummy, train=False)["params"]
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx, plateau=optim.PlateauState.create())

    shardings = sharding.state_shardings(jax.eval_shape(init), mesh, config.model_parallel)
    return jax.jit(init, out_shardings=shardings)()


def _gradients(
    state: TrainState, batch: Batch, base_key: jax.Array, config: ml_collections.ConfigDict, stats: augment.DataStats
) -> tuple[jax.Array, Any, jax.Array]:
    """The augmented inputs, gradients and logits of the step `state.step` on
    `batch`, in micro-batches of `config.micro_batch_size` when it is set.

    Randomness (crops, flips, colour noise, dropout) comes from
    `fold_in(base_key, step)`, so a resumed run draws exactly what an
    uninterrupted one would, and `inspect_step` sees the step's own draws.
    """
    step_key = jax.random.fold_in(base_key, state.step)
    augment_key, dropout_key = jax.random.split(step_key)
    images = augment.train_inputs(
        batch["image"],
        augment_key,
        stats,
        crop=config.model.input_size,
        flip=config.random_flip,
        chunk=config.crop_chunk,
        pca_std=config.pca_noise_std,
    )

    def loss_fn(params, images, labels, key):
        logits = state.apply_fn({"params": params}, images, train=True, rngs={"dropout": key})
        # Weight decay lives in the optimiser (PAPER.md's rule), not the loss.
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, logits

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    micro = config.micro_batch_size
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
) -> tuple[TrainState, metrics.TrainMetrics]:
    """One SGD step on a uint8 batch: augment on device, forward, backward, update."""
    _, grads, logits = _gradients(state, batch, base_key, config, stats)
    new_state = state.apply_gradients(grads=grads)
    step_metrics = metrics.TrainMetrics.single_from_model_output(
        **metrics.per_example_outputs(logits, batch["label"]),
        learning_rate=optim.current_learning_rate(new_state.opt_state),
    )
    return new_state, step_metrics


def inspect_step(
    state: TrainState,
    batch: Batch,
    base_key: jax.Array,
    *,
    config: ml_collections.ConfigDict,
    stats: augment.DataStats,
) -> summaries.Inspection:
    """What TensorBoard shows of the step `train_step(state, batch, base_key)`
    is about to take: its first inputs, its gradients and the norms, computed
    from the same batch and keys (one extra forward/backward pass)."""
    images, grads, _ = _gradients(state, batch, base_key, config, stats)
    return summaries.Inspection(
        images=images[: summaries.NUM_INPUT_IMAGES],
        params=state.params,
        grads=grads,
        param_norms=summaries.layer_norms(state.params),
        grad_norms=summaries.layer_norms(grads),
    )


def eval_probs(
    params: Any,
    images_uint8: jax.Array,
    *,
    config: ml_collections.ConfigDict,
    model: models.AlexNet,
    stats: augment.DataStats,
) -> jax.Array:
    """Class probabilities of uint8 `resize_size` images: centre crop or the
    10 views (`config.eval_views`), the views' softmax outputs averaged."""
    views = augment.eval_inputs(images_uint8, stats, crop=config.model.input_size, views=config.eval_views)
    num_views, batch_size = views.shape[:2]
    logits = model.apply({"params": params}, views.reshape(num_views * batch_size, *views.shape[2:]), train=False)
    return jax.nn.softmax(logits.reshape(num_views, batch_size, -1).astype(jnp.float32)).mean(0)


def eval_step(
    params: Any,
    batch: Batch,
    *,
    config: ml_collections.ConfigDict,
    model: models.AlexNet,
    stats: augment.DataStats,
) -> metrics.EvalMetrics:
    """Metrics of `eval_probs` on a batch; padded examples (mask 0) do not count."""
    probs = eval_probs(params, batch["image"], config=config, model=model, stats=stats)
    # log of the averaged probabilities: cross-entropy and top-k of the ensemble.
    outputs = metrics.per_example_outputs(jnp.log(probs), batch["label"])
    return metrics.EvalMetrics.single_from_model_output(**outputs, mask=batch["mask"].astype(bool))


def evaluate(eval_fn, params: Any, batches: Iterator[dict], mesh: jax.sharding.Mesh) -> metrics.EvalMetrics:
    total = None
    for local_batch in batches:
        batch_metrics = eval_fn(params, sharding.global_batch(local_batch, mesh))
        total = batch_metrics if total is None else total.merge(batch_metrics)
    return total


def make_step_fns(
    config: ml_collections.ConfigDict,
    model: models.AlexNet,
    mesh: jax.sharding.Mesh,
    state: TrainState,
    stats: augment.DataStats,
):
    """The jitted train and eval steps under `config.model_parallel`; the
    state keeps its sharding from step to step, metrics are replicated."""
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    replicated = sharding.replicated(mesh)
    train_fn = jax.jit(
        sharding.partitioned(functools.partial(train_step, config=config, stats=stats), mesh, config.model_parallel),
        donate_argnums=0,
        out_shardings=(state_sharding, replicated),
    )
    return train_fn, make_eval_fn(config, model, mesh, stats)


def make_eval_fn(
    config: ml_collections.ConfigDict, model: models.AlexNet, mesh: jax.sharding.Mesh, stats: augment.DataStats
):
    """The jitted `eval_step`, (params, global batch) -> replicated metrics."""
    return jax.jit(
        sharding.partitioned(
            functools.partial(eval_step, config=config, model=model, stats=stats), mesh, config.model_parallel
        ),
        out_shardings=sharding.replicated(mesh),
    )


def make_inspect_fn(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, stats: augment.DataStats):
    """The jitted `inspect_step`; its outputs are replicated, so every process
    (process 0 writes them) holds them whole, however the model is sharded."""
    return jax.jit(
        sharding.partitioned(functools.partial(inspect_step, config=config, stats=stats), mesh, config.model_parallel),
        out_shardings=sharding.replicated(mesh),
    )


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_finite(step: int, step_metrics: metrics.TrainMetrics) -> None:
    loss = float(step_metrics.loss.compute())
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"loss is {loss} at step {step}: stopping; checkpoints up to the last good one are kept"
        )


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    if config.num_train_steps > 0:
        return config.num_train_steps
    return int(config.num_epochs * steps_per_epoch)


def check_dataset(config: ml_collections.ConfigDict, builder) -> int:
    """Validates the config against the prepared dataset; returns steps per epoch."""
    if builder is None:  # synthetic data: any number of classes
        return synthetic_data.steps_per_epoch(config)
    for field in ("train_split", "eval_split"):
        if config[field] not in builder.info.splits:
            raise ValueError(
                f"config.{field}={config[field]!r} is not a split of {config.dataset}: "
                f"use one of {sorted(builder.info.splits.keys())}"
            )
    classes = builder.info.features["label"].num_classes
    if config.model.num_classes != classes:
        raise ValueError(
            f"config.model.num_classes={config.model.num_classes} but {config.dataset} has {classes} classes"
        )
    train_examples = input_pipeline.num_examples(builder, config.train_split)
    if train_examples < config.batch_size:
        raise ValueError(f"config.batch_size={config.batch_size} exceeds the {train_examples} training examples")
    return input_pipeline.steps_per_epoch(config, builder)


def eval_summary(eval_metrics: metrics.EvalMetrics) -> dict[str, float]:
    """Host floats of the metrics, with `eval_num_examples` (the examples counted)."""
    results = {f"eval_{k}": float(v) for k, v in eval_metrics.compute().items()}
    results["eval_num_examples"] = eval_metrics.num_examples()
    return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (resuming from `workdir` if it holds checkpoints) and evaluates.

    Returns the final evaluation summary (eval_loss, eval_top1_error, ...).
    Raises ValueError (bad config) or DatasetUnavailableError before writing
    anything to `workdir`, and FloatingPointError on a non-finite loss.
    """
    validate_config(config)
    synthetic = config.dataset == synthetic_data.NAME
    # Synthetic data needs no tfds builder: no dataset, split or statistics.
    builder = None if synthetic else input_pipeline.get_builder(config)
    steps_per_epoch = check_dataset(config, builder)
    total_steps = num_train_steps(config, steps_per_epoch)
    # Data first, before the workdir is touched: a cache of other data stops here.
    if synthetic:
        stats = data_stats.published(config.mean_rgb)
    else:
        input_pipeline.prepare(config, builder)  # the preprocessed caches, once per dataset
        stats = data_stats.load_or_compute(config, builder)

    mesh = sharding.make_mesh(config.mesh)
    logging.info("Mesh %s over %d devices, model parallelism %r", dict(mesh.shape), mesh.size, config.model_parallel)
    model = create_model(config)
    state = create_train_state(config, model, steps_per_epoch, mesh)
    manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
    state, start_step, saved_position = checkpointing.restore_latest_with_data(manager, state)
    position = input_pipeline.resume_position(config, saved_position, start_step, steps_per_epoch)
    if start_step:
        logging.info(
            "Resumed from the checkpoint of step %d in %s; data at epoch %d, batch %d",
            start_step,
            workdir,
            position.epoch,
            position.batch,
        )
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info(
        "AlexNet with %d parameters; %d steps of %d (%d per epoch)",
        num_params,
        total_steps - start_step,
        total_steps,
        steps_per_epoch,
    )

    writer = summaries.create_writer(workdir, just_logging=jax.process_index() > 0)
    if start_step == 0:
        summaries.write_run_info(writer, config, num_params)

    replicated = sharding.replicated(mesh)
    train_fn, eval_fn = make_step_fns(config, model, mesh, state, stats)
    inspect_fn = make_inspect_fn(config, mesh, stats)
    base_key = jax.random.key(config.seed + 1)

    def run_eval(step: int) -> dict[str, float]:
        batches = synthetic_data.eval_batches(config) if synthetic else input_pipeline.eval_batches(config, builder)
        summary = eval_summary(evaluate(eval_fn, state.params, batches, mesh))
        writer.write_scalars(step, summary)
        return summary

    if synthetic:
        local_batches = synthetic_data.train_batches(config)
    else:
        local_batches = input_pipeline.train_batches(config, builder, position)
    # Global arrays a few steps ahead: the copies overlap the running step.
    train_iter = sharding.prefetch_to_device(local_batches, mesh, config.prefetch_batches)
    report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
    train_metrics, previous, summary = None, None, None
    period_start, period_steps = time.monotonic(), 0
    try:
        for step in range(start_step + 1, total_steps + 1):
            batch = next(train_iter)
            if step == start_step + 1 or step % config.eval_every_steps == 0 or step == total_steps:
                # Histograms of non-finite weights would fail in the writer's
                # thread and hide the real error: stop here, naming the step.
                if previous is not None:
                    _check_finite(*previous)
                if not bool(_all_finite(state.params)):
                    raise FloatingPointError(f"parameters are not finite before step {step}: stopping")
                # Before the step: train_fn donates the state it is given.
                summaries.write_inspection(writer, step, inspect_fn(state, batch, base_key), config)
            state, step_metrics = train_fn(state, batch, base_key)
            # Check the previous step while this one runs: no host stall.
            if previous is not None:
                _check_finite(*previous)
            previous = (step, step_metrics)
            train_metrics = step_metrics if train_metrics is None else train_metrics.merge(step_metrics)
            period_steps += 1
            report(step)

            if step % config.log_every_steps == 0 or step == total_steps:
                _check_finite(*previous)
                scalars = {f"train_{k}": float(v) for k, v in train_metrics.compute().items()}
                elapsed = time.monotonic() - period_start
                scalars["images_per_sec"] = period_steps * config.batch_size / elapsed
                writer.write_scalars(step, scalars)
                train_metrics, period_start, period_steps = None, time.monotonic(), 0

            if step % config.eval_every_steps == 0 or step == total_steps:
                summary = run_eval(step)
                if config.optimizer.schedule == "plateau":
                    state = _plateau_step(state, summary["eval_top1_error"], config.optimizer, replicated)

            if step % config.checkpoint_every_steps == 0 or step == total_steps:
                _check_finite(*previous)
                if not bool(_all_finite(state.params)):
                    raise FloatingPointError(f"parameters are not finite after step {step}: not saving them")
                data = input_pipeline.position_record(
                    config, position.advanced(step - start_step, steps_per_epoch), step, steps_per_epoch
                )
                checkpointing.save(manager, step, state, data)
    finally:
        manager.wait_until_finished()
        writer.flush()

    if summary is None:  # resumed a finished run: evaluate the restored state
        summary = run_eval(total_steps)
        writer.flush()
    return summary


def _plateau_step(state: TrainState, error: float, opt: ml_collections.ConfigDict, replicated) -> TrainState:
    """Feeds one validation error to the plateau schedule; drops the rate if due."""
    plateau, drop = optim.plateau_update(
        state.plateau, error, patience=opt.plateau_patience, max_drops=opt.plateau_max_drops
    )
    opt_state = state.opt_state
    if drop:
        new_rate = float(optim.current_learning_rate(opt_state)) * opt.drop_factor
        logging.info("Validation error has not improved: learning rate -> %g", new_rate)
        opt_state = optim.with_learning_rate(opt_state, new_rate)
    return state.replace(plateau=jax.device_put(plateau, replicated), opt_state=opt_state)
