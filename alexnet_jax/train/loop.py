"""The training loop: the jitted steps of steps.py over the dataset, clu
metrics and writers, orbax checkpoints, resume, NaN guard and exact evaluation."""

from __future__ import annotations

import collections
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from clu import periodic_actions

from alexnet_jax import errors
from alexnet_jax.data import pipeline, synthetic
from alexnet_jax.files import folder_lock, paths
from alexnet_jax.parallel import sharding
from alexnet_jax.runs import config_json, restart, run_notes, run_stats
from alexnet_jax.runs.validation import validate_config
from alexnet_jax.train import checkpointing, init_from, metrics, micro_batch, optim, steps, summaries, throughput
from alexnet_jax.train.preemption import Preempted, StopSignals


def evaluate(eval_fn, params: Any, batches: Iterator[dict], mesh: jax.sharding.Mesh) -> metrics.EvalMetrics:
    total = None
    for local_batch in batches:
        batch_metrics = eval_fn(params, sharding.global_batch(local_batch, mesh))
        total = batch_metrics if total is None else total.merge(batch_metrics)
    return total


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


# How many steps the host may dispatch ahead of the last step whose loss it
# has read: the device never waits on the host for that many steps (a GPU
# step of ~5 ms), while a non-finite loss is still caught within a few steps.
HOST_LEAD_STEPS = 3


def _check_finite(step: int, step_metrics: metrics.TrainMetrics) -> None:
    loss = float(step_metrics.loss.compute())
    if not math.isfinite(loss):
        raise errors.Diverged(f"loss is {loss} at step {step}: stopping; checkpoints up to the last good one are kept")


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    if config.num_train_steps > 0:
        return config.num_train_steps
    return optim.epoch_to_step(config.num_epochs, steps_per_epoch)  # the schedules' rule


def check_dataset(config: ml_collections.ConfigDict, builder) -> int:
    """Validates the config against the prepared dataset; returns steps per epoch."""
    if builder is None:  # synthetic data: any number of classes
        return synthetic.steps_per_epoch(config)
    pipeline.check_splits_and_classes(config, builder)
    train_examples = pipeline.num_examples(builder, config.train_split)
    if train_examples < config.batch_size:
        raise errors.ConfigError(
            f"config.batch_size={config.batch_size} exceeds the {train_examples} training examples"
        )
    return pipeline.steps_per_epoch(config, builder)


def eval_summary(eval_metrics: metrics.EvalMetrics) -> dict[str, float]:
    """Host floats of the metrics, with `eval_num_examples` (the examples counted)."""
    results = {f"eval_{k}": float(v) for k, v in eval_metrics.compute().items()}
    results["eval_num_examples"] = eval_metrics.num_examples()
    return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, float]:
    """Trains (resuming from `workdir` if it holds checkpoints) and evaluates.
    `workdir` is a local path or a URI (gs://...), a string or a path-like.

    Returns the final evaluation summary (eval_loss, eval_top1_error, ...).
    Raises ValueError (bad config) or DatasetUnavailableError before writing
    anything to `workdir`, FloatingPointError on a non-finite loss, and
    Preempted after saving the step at which SIGTERM or SIGINT stopped the loop.
    Refuses a workdir that another live run holds (folder_lock.FolderInUseError).
    """
    with folder_lock.RunLock() as run_lock:  # released on every exit: finished, failed or stopped
        return _train_and_evaluate(config, workdir, run_lock)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, run_lock: folder_lock.RunLock
) -> dict[str, float]:
    validate_config(config)
    workdir = paths.as_path(workdir)  # one path type below: local (absolute) or remote alike
    is_synthetic = config.dataset == synthetic.NAME
    # Synthetic data needs no tfds builder: no dataset, split or statistics.
    builder = None if is_synthetic else pipeline.get_builder(config)
    steps_per_epoch = check_dataset(config, builder)
    total_steps = num_train_steps(config, steps_per_epoch)
    # Data first, before the workdir is touched: a cache of other data stops here.
    if not is_synthetic:
        pipeline.prepare(config, builder)  # the preprocessed caches, once per dataset
    run_data = run_stats.for_training(config, workdir, builder)  # a restart's own, whatever data_dir holds now
    stats = run_data.stats

    mesh = sharding.make_mesh(config.mesh)
    model = steps.create_model(config)
    resumed_step = checkpointing.latest_step(workdir)
    checkpointing.check_not_shortened(config, workdir, resumed_step, total_steps)
    # Another run's parameters, at the first start only (a restart resumes its
    # own); before the first checkpoint, the source config.json recorded.
    from_source = config.init_from and not resumed_step
    source = init_from.source_of_run(config.init_from, config_json.load(workdir)) if from_source else None
    if source:
        init_from.check_source(steps.abstract_params(config, model, mesh), source, tuple(config.init_reset))

    config_json.check_writable(workdir)
    run_lock.acquire(workdir)  # one live run per workdir, before its first write
    # The run's own config: written at the first start, a restart must match it.
    started_from = {"initialised_from": source} if source else {}
    restart.check_restart(config, workdir, resumed_step / steps_per_epoch, jax.process_index() == 0, started_from)
    run_stats.keep(config, workdir, run_data, is_writer=jax.process_index() == 0)  # beside config.json

    logging.info("Mesh %s over %d devices, model parallelism %r", dict(mesh.shape), mesh.size, config.model_parallel)
    state = steps.create_train_state(config, model, steps_per_epoch, mesh)
    manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
    state, start_step, saved_position = checkpointing.restore_latest_with_data(manager, state)
    if source and not start_step:
        frozen = tuple(config.frozen)
        state = state.replace(params=init_from.initial_params(state.params, source, tuple(config.init_reset), frozen))
    elif config.frozen:
        logging.info("Layers: %s", init_from.frozen_message(tuple(config.frozen)))
    position = pipeline.resume_position(config, saved_position, start_step, steps_per_epoch)
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
    noise_end = steps.noise_end_step(config, steps_per_epoch)
    base_key = jax.random.key(config.seed + 1)
    micro, train_fn = micro_batch.make_train_fn(config, mesh, state, stats, noise_end, base_key)
    if jax.process_index() == 0:
        run_notes.record_micro_batch_size(workdir, start_step, micro)
    eval_fn = steps.make_eval_fn(config, model, mesh, stats)
    # The step's own gradients: at the micro-batch size it computes with (-1 resolved).
    inspect_fn = steps.make_inspect_fn(micro_batch.with_micro_batch_size(config, micro), mesh, stats, noise_end)

    def run_eval(step: int) -> dict[str, float]:
        batches = synthetic.eval_batches(config) if is_synthetic else pipeline.eval_batches(config, builder)
        summary = eval_summary(evaluate(eval_fn, state.params, batches, mesh))
        writer.write_scalars(step, summary)
        return summary

    if is_synthetic:
        local_batches = synthetic.train_batches(config)
    else:
        local_batches = pipeline.train_batches(config, builder, position)
    # Global arrays a few steps ahead: the copies overlap the running step.
    train_iter = sharding.prefetch_to_device(local_batches, mesh, config.prefetch_batches)
    report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)

    def note_stop(signal_name: str) -> None:  # a second Ctrl-C ends the process at once: noted now
        if jax.process_index() == 0:
            run_notes.record_interrupted(workdir, signal_name, checkpointing.latest_step(workdir))

    stop, stopping = StopSignals(on_stop=note_stop).install(), False
    train_metrics, summary = None, None
    # (step, metrics) of the steps whose loss is not read yet; the last is the newest.
    in_flight: collections.deque = collections.deque()
    # images_per_sec of the training steps alone: evaluations, inspections and saves paused.
    rate = throughput.TrainingThroughput(config.batch_size, report)
    step = start_step
    try:
        for step in range(start_step + 1, total_steps + 1):
            if stopping:  # a stop signal, and the step before this one is saved
                raise Preempted(step - 1)
            batch = next(train_iter)
            if step == start_step + 1 or step % config.eval_every_steps == 0 or step == total_steps:
                rate.pause("inspect", in_flight[-1][1] if in_flight else None)
                # Histograms of non-finite weights would fail in the writer's
                # thread and hide the real error: stop here, naming the step.
                if in_flight:
                    _check_finite(*in_flight[-1])
                if not bool(_all_finite(state.params)):
                    raise errors.Diverged(f"parameters are not finite before step {step}: stopping")
                # Before the step: train_fn donates the state it is given.
                summaries.write_inspection(writer, step, inspect_fn(state, batch, base_key), config)
                rate.resume()
            first = step == start_step + 1  # its call compiles: no training step's time
            if first:
                rate.pause("compile")
            state, step_metrics = train_fn(state, batch, base_key)
            if first:
                rate.resume(step_metrics)
            else:
                rate.step_done()
            # The loss of the step HOST_LEAD_STEPS back is read (a device sync
            # on it, long finished): the host dispatches ahead instead of
            # waiting on every step, and a diverged run still stops soon.
            in_flight.append((step, step_metrics))
            if len(in_flight) > HOST_LEAD_STEPS:
                _check_finite(*in_flight.popleft())
            train_metrics = step_metrics if train_metrics is None else train_metrics.merge(step_metrics)
            report(step)

            if step % config.log_every_steps == 0 or step == total_steps:
                _check_finite(*in_flight[-1])
                scalars = {f"train_{k}": float(v) for k, v in train_metrics.compute().items()}
                if (images_per_sec := rate.images_per_sec()) is not None:  # None: no step timed
                    scalars["images_per_sec"] = images_per_sec
                writer.write_scalars(step, scalars)
                train_metrics = None

            if step % config.eval_every_steps == 0 or step == total_steps:
                rate.pause("eval", in_flight[-1][1])
                summary = run_eval(step)
                if config.optimizer.schedule == "plateau":
                    state = _plateau_step(state, summary["eval_top1_error"], config.optimizer, replicated)
                rate.resume(state)

            # A stop signal: save this step as the periodic save does, then stop (Preempted above).
            stopping = stop.requested(step - start_step) and step < total_steps
            if step % config.checkpoint_every_steps == 0 or step == total_steps or stopping:
                rate.pause("save", in_flight[-1][1])
                _check_finite(*in_flight[-1])
                if not bool(_all_finite(state.params)):
                    raise errors.Diverged(f"parameters are not finite after step {step}: not saving them")
                data = pipeline.position_record(
                    config, position.advanced(step - start_step, steps_per_epoch), step, steps_per_epoch
                )
                checkpointing.save(manager, step, state, data)
                rate.resume()
    except Preempted as stopped:
        if jax.process_index() == 0:
            run_notes.record_exit(workdir, "stopped", stopped.step, str(stopped))
        raise
    except Exception as error:
        if jax.process_index() == 0:  # the workdir says where and why the run stopped (launch.report)
            run_notes.record_exit(workdir, "failed", step, f"{type(error).__name__}: {error}")
        raise
    finally:
        checkpointing.wait_until_finished(manager)
        writer.flush()
        stop.restore()  # after the wait: a repeated SIGTERM must not cut the save short

    if summary is None:  # resumed a finished run: evaluate the restored state
        summary = run_eval(total_steps)
        writer.flush()
    if jax.process_index() == 0:
        run_notes.record_exit(workdir, "finished", total_steps)
    return summary


def _plateau_step(
    state: steps.TrainState, error: float, opt: ml_collections.ConfigDict, replicated
) -> steps.TrainState:
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
