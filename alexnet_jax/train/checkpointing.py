"""Orbax checkpoints in `<workdir>/checkpoints`: the train state (item
"state") and the position of the training data stream (item "data", JSON).

Orbax writes each step into a temporary folder and renames it only when the
write is complete, so a crash or kill mid-save leaves the previous checkpoints
intact and the half-written one is ignored; the next start's manager removes
such leftover folders (`*.orbax-checkpoint-tmp-*`, orbax's
cleanup_tmp_directories). Every process calls save (orbax coordinates them);
only the primary host writes metadata and the JSON item. The workdir may be
a local path or a URI (gs://...): orbax is given an `epath.Path`
(paths.as_path).

Restoring reads the newest step first (alexnet_jax.train.checkpoint_reads
tells a step that holds another train state, one the storage failed to
deliver and a damaged one apart): the first two raise one RunError, nothing
moved; a damaged step makes the older one tried, and once one is read the
damaged ones are moved to `<workdir>/damaged_checkpoints/`.
Several processes: each reads with a manager of its own (no barriers inside
a read that may fail on one process only), then all exchange their outcome
of that step (a tiny all-gather) and act alike: all restore the step only
if every process read it, else all try the next older one. Only process 0
moves damaged steps.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from alexnet_jax import errors
from alexnet_jax.files import paths
from alexnet_jax.train import checkpoint_reads
from alexnet_jax.train.checkpoint_reads import DATA, DIFFERENT, READ, STATE, UNAVAILABLE

PyTree = Any
DAMAGED = "damaged_checkpoints"  # in the workdir: checkpoints that could not be read


def directory(workdir: str | os.PathLike) -> epath.Path:
    """`<workdir>/checkpoints`: absolute if local (orbax wants that), a URI unchanged."""
    return paths.as_path(workdir) / "checkpoints"


def make_manager(workdir: str | os.PathLike, max_to_keep: int) -> ocp.CheckpointManager:
    """A manager keeping the newest `max_to_keep` checkpoints (so always the last)."""
    # Leftover temporary folders of saves cut short (a second Ctrl-C, a kill) go at creation.
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True)
    return ocp.CheckpointManager(directory(workdir), options=options)


class SaveError(errors.Error, OSError):
    """A checkpoint could not be written (a full disk, say); the message names
    the folder. The checkpoints before it are intact (orbax renames a step's
    folder into place only when it is complete)."""


def save(manager: ocp.CheckpointManager, step: int, state: PyTree, data: dict) -> None:
    """Saves asynchronously: training continues while the files are written.
    `data` (JSON) is where the input stream continues after `step`. An
    earlier save's failure, which orbax reports here, raises SaveError."""
    args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data)})
    try:
        manager.save(step, args=args, force=True)
    except Exception as error:
        raise _save_error(manager, error, step) from error


def wait_until_finished(manager: ocp.CheckpointManager) -> None:
    """Waits for the saves in flight; SaveError if one of them failed."""
    try:
        manager.wait_until_finished()
    except Exception as error:
        raise _save_error(manager, error) from error


def _save_error(manager: ocp.CheckpointManager, error: Exception, step: int | None = None) -> SaveError:
    which = f"the checkpoint of step {step}" if step is not None else "a checkpoint"
    return SaveError(
        f"saving {which} in {manager.directory} failed ({type(error).__name__}: {checkpoint_reads.first_line(error)}); "
        "the earlier checkpoints are intact: free the disk (or fix the path) and rerun to resume"
    )


def restore_latest_with_data(manager: ocp.CheckpointManager, target: PyTree) -> tuple[PyTree, int, dict | None]:
    """The newest readable checkpoint's state (on `target`'s structure and
    shardings), its step and its data position; (`target`, 0, None) when
    there is none. The position is None for checkpoints written before it
    was saved (a single "default" item holding the state).

    A damaged newer step is logged and, once an older one is read, moved
    aside into `DAMAGED` next to the checkpoints folder: the manager then
    neither restores it again nor refuses to save its step number anew
    (orbax does not overwrite a step). Raises ValueError (one line, nothing
    moved) when a step holds another train state than `target`, when reading
    keeps failing for a transient reason, or when none can be read.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    reader = _reader(manager)
    damaged: list[int] = []
    try:
        while step := _agreed_step([s for s in manager.all_steps() if not damaged or s < damaged[-1]]):
            outcome, restored, message = checkpoint_reads.read_step(reader, step, abstract)
            outcomes = _gather(outcome)
            if set(outcomes) == {READ}:
                if damaged:
                    _set_aside(manager, damaged)
                state, data = restored
                return state, step, data
            for kind in (DIFFERENT, UNAVAILABLE):  # this process's own message, else a pointer to the other's log
                if kind in outcomes:
                    raise errors.RunError(message if outcome == kind else _elsewhere(manager, step, kind))
            damaged.append(step)
    finally:
        if reader is not manager:
            reader.close()
    if damaged:
        raise errors.RunError(
            f"no checkpoint in {manager.directory} can be read (steps {', '.join(map(str, damaged))}; "
            f"the log says why): move them away to start afresh"
        )
    return target, 0, None


def _elsewhere(manager: ocp.CheckpointManager, step: int, kind: int) -> str:
    what = "holds another train state" if kind == DIFFERENT else "could not be read for a transient reason"
    folder = checkpoint_reads.step_dir(manager, step)
    return f"{folder} {what} on another process (its log says more); nothing was moved"


def _reader(manager: ocp.CheckpointManager) -> ocp.CheckpointManager:
    """The manager that reads: several processes each get one of their own,
    whose reads wait for no other process (orbax ends a restore at a barrier
    of all processes, which one that failed to read would never reach)."""
    if jax.process_count() == 1:
        return manager
    me = jax.process_index()
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    options = ocp.CheckpointManagerOptions(create=False, multiprocessing_options=alone)
    return ocp.CheckpointManager(manager.directory, options=options)


def _agreed_step(steps: list[int]) -> int:
    """The newest of `steps` on one process; with several, the oldest of the
    processes' newest (a step some process lacks counts as unreadable there)."""
    return min(_gather(max(steps, default=0)))


def _gather(value: int) -> list[int]:
    """`value` of every process, in process order (a small all-gather)."""
    if jax.process_count() == 1:
        return [value]
    return [int(v) for v in multihost_utils.process_allgather(np.int32(value))]


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    """Moves the damaged checkpoints of `steps` to
    `<workdir>/damaged_checkpoints/<step>` (kept, for inspection), on the
    primary process; every process then rereads the folder."""
    aside = manager.directory.parent / DAMAGED
    if jax.process_index() == 0:
        for step in steps:
            if not (manager.directory / str(step)).exists():  # missing in this process's view
                continue
            destination = aside / str(step)
            suffix = 1
            while destination.exists():  # the same step damaged in an earlier launch
                destination, suffix = aside / f"{step}.{suffix}", suffix + 1
            aside.mkdir(parents=True, exist_ok=True)
            (manager.directory / str(step)).rename(destination)
            logging.warning("Moved the damaged checkpoint of step %d to %s", step, destination)
    multihost_utils.sync_global_devices("alexnet_jax: damaged checkpoints set aside")
    manager.reload()


def latest_step(workdir: str | os.PathLike) -> int:
    """The newest finished checkpoint's step in `workdir` (0 if none), read
    from the folder names without creating anything (orbax's unfinished
    saves carry a suffix, so they are not counted)."""
    folder = directory(workdir)
    if not folder.is_dir():  # no run yet (or no workdir at all: said at start-up)
        return 0
    return max((int(entry.name) for entry in folder.iterdir() if entry.name.isdigit()), default=0)


def check_not_shortened(config: Any, workdir: str | os.PathLike, newest_step: int, total_steps: int) -> None:
    """One-line ValueError, before anything is written, when the run would
    end before the newest checkpoint's step (`config.num_train_steps` or
    `num_epochs` lowered on a restart): that checkpoint's parameters would be
    evaluated and recorded as the shorter run's."""
    if newest_step > total_steps:
        asked = (
            f"config.num_train_steps={config.num_train_steps}"
            if config.num_train_steps > 0
            else f"config.num_epochs={config.num_epochs} ({total_steps} steps)"
        )
        raise errors.ConfigError(
            f"{asked} is below the newest checkpoint's step {newest_step} in {directory(workdir)}: "
            f"pass at least {newest_step} steps, or use a new --workdir"
        )


def restore_params(workdir: str | os.PathLike, abstract_params: PyTree) -> tuple[PyTree, int]:
    """The parameters alone of the newest checkpoint in `workdir`, on
    `abstract_params`' shapes and shardings, and its step.

    Only the `params` subtree of the state is read (orbax's partial
    restore), so the optimiser, its schedule and the step counter never
    have to match: evaluation needs the network, nothing else.
    """
    folder = directory(workdir)
    step = latest_step(workdir)
    if not step:
        raise errors.RunError(
            f"no finished checkpoint in {folder}: train first, or let the training run save one "
            f"(every config.checkpoint_every_steps and at the end)"
        )
    manager = ocp.CheckpointManager(folder, options=ocp.CheckpointManagerOptions(create=False))
    target = {"params": abstract_params}
    restore = ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
    )
    if checkpoint_reads.has_items(manager, step):
        restored = manager.restore(step, args=ocp.args.Composite(**{STATE: restore}))[STATE]
    else:
        restored = manager.restore(step, args=restore)
    manager.close()
    return restored["params"], step


def restore_latest(manager: ocp.CheckpointManager, target: PyTree) -> tuple[PyTree, int]:
    """The newest checkpoint's state and step, or (`target`, 0) when there is none."""
    state, step, _ = restore_latest_with_data(manager, target)
    return state, step
