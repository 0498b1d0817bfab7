"""Starting a run from another run's parameters (`config.init_from`).

The new run takes the parameters of a checkpoint (a workdir's newest, or one
step directory), not its optimiser state, step or data position: it starts
at step 0 with its own schedule. Layers named in `config.init_reset` keep
their fresh initialisation (a new fc8 for another class count); any other
layer must have the same shapes in both networks. Used only at a run's first
start: a restart resumes from the run's own checkpoints.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from alexnet_jax import errors
from alexnet_jax.files import paths
from alexnet_jax.train import checkpointing

PyTree = Any


def resolve(path: str | os.PathLike) -> str:
    """The checkpoint step directory `path` names: itself if it is one (it
    holds the train state), else the newest one of the workdir `path`; a
    string (it is recorded in config.json), local or a URI. One-line
    ValueError naming `path` otherwise."""
    path = paths.as_path(path)
    if (path / checkpointing.STATE).is_dir():
        return str(path)
    step = checkpointing.latest_step(path)
    if step:
        return str(checkpointing.directory(path) / str(step))
    raise errors.ConfigError(
        f"config.init_from={str(path)!r} is neither a checkpoint step directory (<workdir>/checkpoints/<step>) "
        "nor a workdir with a finished checkpoint"
    )


def source_of_run(path: str | os.PathLike, record: Mapping | None) -> str:
    """The step directory a run starts from: the one its config.json
    `record` notes (`initialised_from`) when the run started before with the
    same `config.init_from` (a restart before its first checkpoint: the
    source may have saved newer ones since), else `resolve(path)`."""
    recorded = (record or {}).get("initialised_from")
    if not recorded or record.get("config", {}).get("init_from") != str(path):
        return resolve(path)
    if not (paths.as_path(recorded) / checkpointing.STATE).is_dir():
        raise errors.RunError(
            f"config.init_from: this run started from {recorded!r} (its config.json), which is gone: "
            "restore it, or use a new --workdir"
        )
    logging.info("Starting from %s again, as config.json records (not %s's newest checkpoint)", recorded, path)
    return recorded


def load_params(step_dir: str) -> dict[str, Any]:
    """The parameters alone of a checkpoint step directory, as saved (host
    NumPy arrays, whatever the shapes and the layout they were saved from)."""
    item = paths.as_path(step_dir) / checkpointing.STATE
    target = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), _saved_params(item))}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
    return ocp.PyTreeCheckpointer().restore(item, args=args)["params"]


def _saved_params(item: str | os.PathLike) -> PyTree:
    """The saved parameters' metadata (shapes, dtypes), read without the arrays."""
    return ocp.PyTreeCheckpointer().metadata(item).item_metadata.tree["params"]


def shapes(params: PyTree) -> dict[str, dict[str, tuple]]:
    """{layer: {"kernel": shape, "bias": shape}} of parameters, arrays or metadata."""
    return {layer: {name: tuple(x.shape) for name, x in values.items()} for layer, values in params.items()}


def check_compatible(
    new: dict[str, dict], source: dict[str, dict], reset: tuple[str, ...], source_name: str
) -> list[str]:
    """The layers to take from the source (those not in `reset`); ValueError
    naming the first layer whose shapes differ or that the source lacks."""
    taken = []
    for layer, layer_shapes in new.items():
        if layer in reset:
            continue
        if layer not in source:
            raise errors.ConfigError(
                f"layer {layer} is not in {source_name}: add it to config.init_reset to initialise it afresh"
            )
        if source[layer] != layer_shapes:
            raise errors.ConfigError(
                f"layer {layer} has shapes {source[layer]} in {source_name} but {layer_shapes} in this run: "
                f"add '{layer}' to config.init_reset to initialise it afresh"
            )
        taken.append(layer)
    return taken


def check_source(abstract_params: PyTree, step_dir: str, reset: tuple[str, ...]) -> None:
    """Before anything is written: the source fits this run's network."""
    check_compatible(
        shapes(abstract_params), shapes(_saved_params(paths.as_path(step_dir) / checkpointing.STATE)), reset, step_dir
    )


def initial_params(fresh: PyTree, step_dir: str, reset: tuple[str, ...], frozen: tuple[str, ...] = ()) -> PyTree:
    """The new run's step-0 parameters: `fresh` (initialised, placed on the
    devices) with every layer not in `reset` replaced by the checkpoint's,
    in the same placement; logged, with the layers `frozen` (config.frozen)."""
    source = load_params(step_dir)
    taken = check_compatible(shapes(fresh), shapes(source), tuple(reset), step_dir)
    params = dict(fresh)
    for layer in taken:
        params[layer] = jax.tree.map(
            lambda new, old: jax.device_put(old.astype(new.dtype), new.sharding), fresh[layer], source[layer]
        )
    logging.info(
        "Parameters from %s: %s taken; %s initialised afresh; %s",
        step_dir,
        ", ".join(taken) or "no layer",
        ", ".join(layer for layer in fresh if layer not in taken) or "no layer",
        frozen_message(frozen),
    )
    return params


def frozen_message(frozen: tuple[str, ...]) -> str:
    """The log's "conv1, conv2 frozen (not trained)", or "no layer frozen"."""
    return f"{', '.join(frozen)} frozen (not trained)" if frozen else "no layer frozen"
