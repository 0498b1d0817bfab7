"""The restart policy: a (re)start's config against the workdir's config.json.

A field that defines the run (field_rules.DEFINING) must be equal; one that
may change (MAY_CHANGE) is taken, logged once and recorded in `restarts`. A
plateau run also keeps the fields that steer its rate (PLATEAU_DEFINING),
and a piecewise run the drops of the learning rate it has already taken.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import ml_collections

from alexnet_jax import errors
from alexnet_jax.files import paths
from alexnet_jax.runs import config_json
from alexnet_jax.runs.config_fields import describe, differences, flat_fields, refusal
from alexnet_jax.runs.field_rules import MAY_CHANGE, PLATEAU_DEFINING


def _past_drops(drop_epochs: list, epochs_done: float) -> list:
    return [e for e in drop_epochs if e <= epochs_done]


def check_restart(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    epochs_done: float,
    is_writer: bool = True,
    first_start: Mapping[str, Any] | None = None,
) -> None:
    """Compares `config` with the workdir's config.json before a (re)start.

    First start: writes config.json (`is_writer`: process 0 only), with
    `first_start`'s entries (e.g. the checkpoint it was initialised from). Restart:
    raises RunError naming every changed defining field (and any drop of
    the learning rate already taken that would move), else logs each
    accepted change once and records it. A workdir from before config.json
    (checkpoints but no file) resumes with one warning.
    """
    record = config_json.load(workdir)
    if record is None:
        if (paths.as_path(workdir) / "checkpoints").is_dir():
            logging.warning(
                "%s has checkpoints but no %s (a run from before it was written): its config cannot be "
                "checked; make sure the overrides match how it was trained",
                workdir,
                config_json.CONFIG_FILE,
            )
        elif is_writer:
            config_json.write(workdir, {**config_json.record_of(config), **(first_start or {})})
        return
    changed = differences(flat_fields(config_json.saved_config(record)), flat_fields(config))
    refused = {k: v for k, v in changed.items() if k not in MAY_CHANGE}
    plateau = config.optimizer.schedule == "plateau"
    steering = {k: v for k, v in changed.items() if plateau and k in PLATEAU_DEFINING}
    if "optimizer.drop_epochs" in changed and config.optimizer.schedule == "piecewise":
        old, new = changed["optimizer.drop_epochs"]
        if _past_drops(old, epochs_done) != _past_drops(new, epochs_done):
            refused["optimizer.drop_epochs"] = (old, new)
    if refused or steering:
        verb = "steers" if len(steering) == 1 else "steer"
        why = f" (a plateau run: {' and '.join(steering)} {verb} its learning rate)" if steering else ""
        raise errors.RunError(refusal(config_json.path(workdir), {**refused, **steering}) + why)
    if not changed:
        return
    for field, (old, new) in changed.items():
        logging.info("config.%s changed on this restart: %s -> %s", field, describe(old), describe(new))
    if is_writer:
        record["config"] = json.loads(json.dumps(config.to_dict()))
        record["restarts"].append(
            {
                "time": config_json.now(),
                "command": [sys.executable, *sys.argv],
                "changed": {k: {"from": old, "to": new} for k, (old, new) in changed.items()},
            }
        )
        config_json.write(workdir, record)
