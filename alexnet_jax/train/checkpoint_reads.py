"""Reading one checkpoint step on one process, and telling why a read failed.

A step's folder holds the items "state" (the train state) and "data" (the
position of the training data stream, JSON); checkpoints written before the
position was saved hold one "default" item, the state.

`read_step` tells three failures apart (`classify`):
- DIFFERENT: the step's metadata reads, but its tree paths or shapes are not
  the train state's (another `frozen`, schedule, per-layer changes or
  network): a message naming the items and the fields. Decided from the
  metadata before any data is read, not from error text.
- UNAVAILABLE: the storage or the machine failed, not the files: MemoryError,
  an OSError other than a missing file (a timeout, a refused connection, a
  permission), tensorstore's and TensorFlow's UNAVAILABLE /
  DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED / ABORTED / PERMISSION_DENIED /
  UNAUTHENTICATED (a 503 or 429 from a bucket). Retried `READ_ATTEMPTS`
  times with a doubling wait, then a message.
- DAMAGED_STEP: anything else while reading the data or metadata of a step
  whose structure matched, or whose metadata cannot be read (a truncated
  file: tensorstore's OUT_OF_RANGE / DATA_LOSS / FAILED_PRECONDITION; a
  deleted one: NOT_FOUND, FileNotFoundError): logged; the caller tries an
  older step (alexnet_jax.train.checkpointing).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

PyTree = Any
STATE, DATA = "state", "data"
# A transient failure to read a step is retried this many times in all, after
# waits of READ_BACKOFF_S, then twice that, ...: seconds, not a long outage.
READ_ATTEMPTS, READ_BACKOFF_S = 3, 2.0

# A step's outcome on one process, exchanged between processes as an integer.
READ, DAMAGED_STEP, DIFFERENT, UNAVAILABLE = 0, 1, 2, 3

_UNAVAILABLE_CODES = (
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "ABORTED",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
)
_UNAVAILABLE_TF = {"UnavailableError", "DeadlineExceededError", "ResourceExhaustedError", "AbortedError"}
_UNAVAILABLE_TF |= {"PermissionDeniedError", "UnauthenticatedError"}
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def first_line(error: Exception) -> str:
    """An orbax or tensorstore error's first line: its message is often pages long."""
    return str(error).strip().split("\n")[0][:300]


def step_dir(manager: ocp.CheckpointManager, step: int) -> epath.Path:
    return manager.directory / str(step)


def has_items(manager: ocp.CheckpointManager, step: int) -> bool:
    """Whether `step` holds the "state" and "data" items (else one "default" item, the state)."""
    return (step_dir(manager, step) / STATE).exists()


def classify(error: BaseException) -> int:
    """UNAVAILABLE or DAMAGED_STEP for an error raised reading a step (the
    module docstring says which is which), from it and the errors it came from."""
    seen = 0
    while error is not None and seen < 10:  # orbax wraps tensorstore's error in its own
        if isinstance(error, MemoryError) or type(error).__name__ in _UNAVAILABLE_TF:
            return UNAVAILABLE
        if isinstance(error, OSError) and not isinstance(error, _MISSING):
            return UNAVAILABLE
        if str(error).lstrip().startswith(_UNAVAILABLE_CODES):  # tensorstore: "<CODE>: <message>"
            return UNAVAILABLE
        error, seen = error.__cause__ or error.__context__, seen + 1
    return DAMAGED_STEP


def read_step(
    reader: ocp.CheckpointManager, step: int, abstract: PyTree
) -> tuple[int, tuple[PyTree, dict | None] | None, str | None]:
    """(outcome, (state, data) if READ, this process's one-line message if not)."""
    folder = step_dir(reader, step)
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            if difference := _difference(_saved_shapes(reader, step), _shapes(abstract)):
                return DIFFERENT, None, _mismatch_message(folder, difference)
            return READ, _restore(reader, step, abstract), None
        except Exception as error:  # orbax, tensorstore, OS and memory errors alike: classified
            kind, reason = classify(error), f"{type(error).__name__}: {first_line(error)}"
        if kind == DAMAGED_STEP:
            logging.warning("Checkpoint %s cannot be read (%s)", folder, reason)
            return DAMAGED_STEP, None, None
        if attempt < READ_ATTEMPTS:
            wait = READ_BACKOFF_S * 2 ** (attempt - 1)
            logging.warning("Reading checkpoint %s failed (%s): retrying in %g s", folder, reason, wait)
            time.sleep(wait)
    message = (
        f"reading {folder} failed {READ_ATTEMPTS} times ({reason}): the storage or the machine, not the files "
        "(nothing was moved); rerun when it answers"
    )
    return UNAVAILABLE, None, message


def _shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
    """{"opt_state.inner_state.0.trace.conv1.kernel": shape, ...}: orbax's names for the leaves."""
    return {".".join(path): tuple(leaf.shape) for path, leaf in ocp.tree.to_flat_dict(tree).items()}


def _saved_shapes(manager: ocp.CheckpointManager, step: int) -> dict[str, tuple[int, ...]]:
    """The stored state's leaves and shapes, from its metadata alone."""
    item = step_dir(manager, step) / (STATE if has_items(manager, step) else "default")
    handler = ocp.StandardCheckpointHandler()
    try:
        return _shapes(handler.metadata(item))
    finally:
        handler.close()


def _difference(saved: dict[str, tuple], wanted: dict[str, tuple]) -> list[str]:
    only_saved = [f"{k} only in the checkpoint" for k in saved if k not in wanted]
    only_wanted = [f"{k} only in this config's state" for k in wanted if k not in saved]
    shapes = [f"{k} {saved[k]} saved, {wanted[k]} now" for k in wanted if k in saved and saved[k] != wanted[k]]
    return shapes + only_saved + only_wanted


def _mismatch_message(folder: epath.Path, difference: list[str]) -> str:
    shown = "; ".join(difference[:3]) + ("; ..." if len(difference) > 3 else "")
    if any(item.startswith("params.") for item in difference):  # the optimiser's state follows the network's
        fields = "the network's model.* fields: width, num_classes, towers, filters, extra_conv6, ..."
    else:
        fields = "frozen, optimizer.schedule, optimizer.layer_lr_changes"
    return (
        f"{folder} holds another train state than this config's ({len(difference)} items differ: {shown}); "
        f"nothing was moved: pass the values the run was trained with ({fields}), or use a new --workdir"
    )


def _restore(manager: ocp.CheckpointManager, step: int, abstract: PyTree) -> tuple[PyTree, dict | None]:
    if not has_items(manager, step):
        return manager.restore(step, args=ocp.args.StandardRestore(abstract)), None
    restored = manager.restore(
        step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract), DATA: ocp.args.JsonRestore()})
    )
    return restored[STATE], restored[DATA]
