"""Orbax checkpoints in `<workdir>/checkpoints`: the train state (item
"state") and the position of the training data stream (item "data", JSON).

Orbax writes each step into a temporary folder and renames it only when the
write is complete, so a crash or kill mid-save leaves the previous checkpoints
intact and the half-written one is ignored. Every process calls save and
restore (orbax coordinates them); only the primary host writes metadata and
the JSON item, and every process reads it back on restore. A checkpoint
damaged afterwards (a file truncated or deleted) is skipped on restore: the
run goes on from the newest readable one. The workdir may be a local path or
a URI (gs://...): orbax is given an `epath.Path` (paths.as_path).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from alexnet_jax import errors, paths

PyTree = Any
STATE, DATA = "state", "data"
DAMAGED = "damaged_checkpoints"  # in the workdir: checkpoints that could not be read


def directory(workdir: str | os.PathLike) -> epath.Path:
    """`<workdir>/checkpoints`: absolute if local (orbax wants that), a URI unchanged."""
    return paths.as_path(workdir) / "checkpoints"


def make_manager(workdir: str | os.PathLike, max_to_keep: int) -> ocp.CheckpointManager:
    """A manager keeping the newest `max_to_keep` checkpoints (so always the last)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
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


def _first_line(error: Exception) -> str:
    """An orbax or tensorstore error's first line: its message is often pages long."""
    return str(error).strip().split("\n")[0][:300]


def _save_error(manager: ocp.CheckpointManager, error: Exception, step: int | None = None) -> SaveError:
    which = f"the checkpoint of step {step}" if step is not None else "a checkpoint"
    return SaveError(
        f"saving {which} in {manager.directory} failed ({type(error).__name__}: {_first_line(error)}); "
        "the earlier checkpoints are intact: free the disk (or fix the path) and rerun to resume"
    )


def restore_latest_with_data(manager: ocp.CheckpointManager, target: PyTree) -> tuple[PyTree, int, dict | None]:
    """The newest readable checkpoint's state (on `target`'s structure and
    shardings), its step and its data position; (`target`, 0, None) when
    there is none. The position is None for checkpoints written before it
    was saved (a single "default" item holding the state).

    A newer checkpoint that cannot be read (a truncated or missing file) is
    logged and moved aside into `DAMAGED` next to the checkpoints folder:
    the manager then neither restores it again nor refuses to save its step
    number anew (orbax does not overwrite a step). Raises ValueError (one
    line, naming the folder) when checkpoints exist but none can be read.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    damaged = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state, data = _restore(manager, step, abstract)
        except Exception as error:  # orbax, tensorstore and OS errors alike: try the one before
            logging.warning(
                "Checkpoint %s cannot be read (%s: %s)",
                manager.directory / str(step),
                type(error).__name__,
                _first_line(error),
            )
            damaged.append(step)
            continue
        if damaged:
            _set_aside(manager, damaged)
        return state, step, data
    if damaged:
        raise errors.RunError(
            f"no checkpoint in {manager.directory} can be read (steps {', '.join(map(str, damaged))}; "
            f"the log says why): move them away to start afresh"
        )
    return target, 0, None


def _has_items(manager: ocp.CheckpointManager, step: int) -> bool:
    """Whether `step` holds the "state" and "data" items; checkpoints from
    before the data position was saved hold one "default" item, the state."""
    return (manager.directory / str(step) / STATE).exists()


def _restore(manager: ocp.CheckpointManager, step: int, abstract: PyTree) -> tuple[PyTree, dict | None]:
    if not _has_items(manager, step):
        return manager.restore(step, args=ocp.args.StandardRestore(abstract)), None
    restored = manager.restore(
        step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract), DATA: ocp.args.JsonRestore()})
    )
    return restored[STATE], restored[DATA]


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    """Moves the damaged checkpoints of `steps` to
    `<workdir>/damaged_checkpoints/<step>` (kept, for inspection), on the
    primary process; every process then rereads the folder."""
    aside = manager.directory.parent / DAMAGED
    if jax.process_index() == 0:
        for step in steps:
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
    if _has_items(manager, step):
        restored = manager.restore(step, args=ocp.args.Composite(**{STATE: restore}))[STATE]
    else:
        restored = manager.restore(step, args=restore)
    manager.close()
    return restored["params"], step


def restore_latest(manager: ocp.CheckpointManager, target: PyTree) -> tuple[PyTree, int]:
    """The newest checkpoint's state and step, or (`target`, 0) when there is none."""
    state, step, _ = restore_latest_with_data(manager, target)
    return state, step
