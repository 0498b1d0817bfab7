"""A run's own config: `<workdir>/config.json`, the contract between a
training run and everything that reads its workdir afterwards.

The first start writes the record (`record_of`): the resolved config (every
field, after overrides), the command line, the package version and git
commit. restart.py compares a restart's config with it, reading.py builds
the readers' config from it, run_notes.py adds how the run ended. The
workdir may be local or a URI (gs://...): every file here goes through
`epath.Path` (files/paths.py).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from collections.abc import Mapping

import ml_collections
from etils import epath

from alexnet_jax import errors
from alexnet_jax.files import paths
from alexnet_jax.runs import defaults, provenance
from alexnet_jax.runs.config_fields import flat_fields, set_field
from alexnet_jax.runs.field_rules import BEFORE_FIELD

CONFIG_FILE = "config.json"


def path(workdir: str | os.PathLike) -> epath.Path:
    return paths.as_path(workdir) / CONFIG_FILE


def load(workdir: str | os.PathLike) -> dict | None:
    """The saved record (`config`, `command`, `version`, `git_commit`, `created`,
    `restarts`), or None for a workdir without one."""
    try:
        return json.loads(path(workdir).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise errors.RunError(f"{path(workdir)} cannot be read ({error}): restore it or use a new --workdir") from None


def write(workdir: str | os.PathLike, record: dict) -> None:
    paths.write_json(path(workdir), record)  # atomically: never a part of the file


def check_writable(workdir: str | os.PathLike, flag: str = "--workdir") -> None:
    """One-line ConfigError naming `flag` and the folder `workdir` if it cannot
    be created or written (read-only, full disk, a bucket without write
    access): said at start-up, not at the first save."""
    folder = paths.as_path(workdir)
    probe = folder / f".write-test-{os.uname().nodename}-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except Exception as error:  # OSError, or tf.errors.* from a remote file system
        reason = getattr(error, "strerror", None) or str(error).strip().split("\n")[0][:200] or type(error).__name__
        raise errors.ConfigError(
            f"{flag} {folder} is not writable ({reason}): use another path or free the disk"
        ) from None


def now() -> str:
    """The records' timestamps: local time, to the second."""
    return datetime.datetime.now().isoformat(timespec="seconds")


def record_of(config: ml_collections.ConfigDict) -> dict:
    """What config.json holds for a first start."""
    return {
        "config": json.loads(json.dumps(config.to_dict())),
        "command": [sys.executable, *sys.argv],
        "version": provenance.version(),
        "git_commit": provenance.git_commit(),
        "created": now(),
        "restarts": [],
    }


def config_from_record(record: Mapping, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`base` (runs/defaults.py's fields) with every saved value; tuples stay tuples."""
    config = base.copy_and_resolve_references()
    fields = flat_fields(base)
    with config.unlocked():
        for field, value in flat_fields(record["config"]).items():
            if field in fields:  # not a field since removed from the code
                set_field(config, field, value)
    return config


def saved_config(record: Mapping) -> ml_collections.ConfigDict:
    """The config a record was trained with; a field it lacks (added to the
    code after the run started) has its default, the behaviour runs had then,
    or its `BEFORE_FIELD` value where the default is another behaviour."""
    config = config_from_record(record, defaults.get_config())
    saved = flat_fields(record["config"])
    for field, value in BEFORE_FIELD.items():
        if field not in saved:
            set_field(config, field, value)
    return config
