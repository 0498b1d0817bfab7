"""Everything the train loop needs before its first step (`set_up` -> `Run`):
the config and dataset checked, the data prepared, the workdir claimed and
its config.json checked, the state built or restored (or initialised from
another run), the writer and the jitted steps. Nothing is written to the
workdir before the config, the dataset and an init_from source are checked."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
from clu import metric_writers
from etils import epath

from alexnet_jax import errors
from alexnet_jax.data import pipeline, synthetic
from alexnet_jax.files import folder_lock, paths
from alexnet_jax.parallel import sharding
from alexnet_jax.runs import config_json, restart, run_notes, run_stats
from alexnet_jax.runs.validation import validate_config
from alexnet_jax.train import checkpointing, init_from, inspection, micro_batch, optim, steps, summaries


@dataclasses.dataclass(frozen=True)
class Run:
    """A training run, ready to step from `start_step` to `total_steps`."""

    config: ml_collections.ConfigDict
    workdir: epath.Path
    mesh: jax.sharding.Mesh
    state: steps.TrainState  # restored (or initialised): the first step's input
    manager: Any  # the orbax checkpoint manager
    writer: metric_writers.MetricWriter
    start_step: int
    total_steps: int
    steps_per_epoch: int
    position: pipeline.StreamPosition  # the data position at `start_step`
    base_key: jax.Array
    train_fn: Callable  # (state, batch, key) -> (state, metrics); donates the state
    eval_fn: Callable  # (params, global batch) -> EvalMetrics
    inspect_fn: Callable  # (state, batch, key) -> the inspection summaries.write_inspection writes
    train_iter: Iterator  # global batches, prefetched to the devices
    eval_batches: Callable[[], Iterator]  # a fresh pass over the evaluation split


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


def set_up(config: ml_collections.ConfigDict, workdir: str | os.PathLike, run_lock: folder_lock.RunLock) -> Run:
    """Checks, prepares, claims `workdir` (with `run_lock`) and restores: see the module's docstring."""
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
    state, start_step, position = _restore(config, workdir, manager, state, source, steps_per_epoch)
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

    stats = run_data.stats
    noise_end = steps.noise_end_step(config, steps_per_epoch)
    base_key = jax.random.key(config.seed + 1)
    micro, train_fn = micro_batch.make_train_fn(config, mesh, state, stats, noise_end, base_key)
    if jax.process_index() == 0:
        run_notes.record_micro_batch_size(workdir, start_step, micro)
    eval_fn = steps.make_eval_fn(config, model, mesh, stats)
    # The step's own gradients: at the micro-batch size it computes with (-1 resolved).
    inspect_fn = inspection.make_inspect_fn(micro_batch.with_micro_batch_size(config, micro), mesh, stats, noise_end)

    if is_synthetic:
        local_batches = synthetic.train_batches(config)
    else:
        local_batches = pipeline.train_batches(config, builder, position)
    # Global arrays a few steps ahead: the copies overlap the running step.
    train_iter = sharding.prefetch_to_device(local_batches, mesh, config.prefetch_batches)

    def eval_batches() -> Iterator:
        return synthetic.eval_batches(config) if is_synthetic else pipeline.eval_batches(config, builder)

    return Run(
        config, workdir, mesh, state, manager, writer, start_step, total_steps, steps_per_epoch, position,
        base_key, train_fn, eval_fn, inspect_fn, train_iter, eval_batches,
    )  # fmt: skip


def _restore(
    config: ml_collections.ConfigDict,
    workdir: epath.Path,
    manager: Any,
    state: steps.TrainState,
    source: str | None,
    steps_per_epoch: int,
) -> tuple[steps.TrainState, int, pipeline.StreamPosition]:
    """The newest checkpoint's state, step and data position (or `source`'s
    parameters at a first start from another run); each said in the log."""
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
    return state, start_step, position
