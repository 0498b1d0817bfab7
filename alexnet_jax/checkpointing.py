"""Orbax checkpoints of the train state in `<workdir>/checkpoints`.

Orbax writes each step into a temporary folder and renames it only when the
write is complete, so a crash or kill mid-save leaves the previous checkpoints
intact and the half-written one is ignored. Every process calls save and
restore (orbax coordinates them); only the primary host writes metadata.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any


def make_manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
    """A manager keeping the newest `max_to_keep` checkpoints (so always the last)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: PyTree) -> None:
    """Saves asynchronously: training continues while the files are written."""
    manager.save(step, args=ocp.args.StandardSave(state), force=True)


def restore_latest(manager: ocp.CheckpointManager, target: PyTree) -> tuple[PyTree, int]:
    """The newest checkpoint restored onto `target`'s structure and shardings,
    or (`target`, 0) when the workdir has none."""
    step = manager.latest_step()
    if step is None:
        return target, 0
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return manager.restore(step, args=ocp.args.StandardRestore(abstract)), step
