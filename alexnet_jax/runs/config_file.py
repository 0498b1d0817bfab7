"""A run's own config: `<workdir>/config.json`, the contract between a
training run and everything that reads its workdir afterwards.

The first start writes the resolved config (every field, after overrides),
the command line, the package version and git commit. A restart compares
its config with the saved one field by field: a field that defines the run
(`DEFINING`) must be equal, one that may change on a restart (`MAY_CHANGE`)
is taken and logged. Evaluation, prediction, retrieval and ensembles build
their config from the saved one, accepting only `READ_MAY_CHANGE` overrides.
The workdir may be local or a URI (gs://...): every file here goes through
`epath.Path` (paths.py).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections
from etils import epath

from alexnet_jax import errors
from alexnet_jax.runs import defaults
from alexnet_jax.files import paths

CONFIG_FILE = "config.json"

# Fields whose value makes a different run: a restart must keep them, and
# reading a workdir (evaluate, predict, retrieval) must not change them.
DEFINING: dict[str, str] = {
    "dataset": "which images",
    "image_folder": "which images (the prepared copy is keyed by the folder)",
    "train_split": "which images; the computed statistics come from it",
    "eval_split": "what the run's own evaluations measure (evaluate may choose another)",
    "shuffle_buffer_size": "the data order",
    "cache_format": "the pixels (jpeg is lossy)",
    "resize_size": "the pixels the crops come from",
    "data_stats": "the mean subtracted and the colour noise",
    "mean_image": "the mean subtracted",
    "mean_rgb": "the mean subtracted (published statistics)",
    "random_flip": "the augmentation",
    "crop_chunk": "the augmentation",
    "pca_noise_std": "the augmentation",
    "pca_noise_end_epoch": "the augmentation",
    "batch_size": "the update and the data position",
    "seed": "initialisation, data order, crops, dropout",
    "init_from": "the initial weights (used at the first start only)",
    "init_reset": "the initial weights",
    "frozen": "which layers train (and the optimiser state's structure)",
    "model.num_classes": "the network",
    "model.input_size": "the network",
    "model.width": "the network",
    "model.towers": "the network",
    "model.filters": "the network",
    "model.cross_tower": "the network",
    "model.extra_conv6": "the network",
    "model.activation": "the network",
    "model.use_lrn": "the network",
    "model.lrn_k": "the network",
    "model.lrn_n": "the network",
    "model.lrn_alpha": "the network",
    "model.lrn_beta": "the network",
    "model.lrn_alpha_over_n": "the network",
    "model.lrn1_before_relu": "the network",
    "model.within_channel_norm": "the network",
    "model.pool_window": "the network",
    "model.pool_stride": "the network",
    "model.dropout_rate": "the network (training)",
    "model.dropout_scaling": "the network's training (and the weights' scale at test)",
    "model.init_scheme": "the initial weights",
    "model.init_match_fan_in": "the initial weights",
    "model.dtype": "the numbers computed",
    "optimizer.learning_rate": "the update rule (a saved plateau rate would silently win)",
    "optimizer.momentum": "the update rule",
    "optimizer.weight_decay": "the update rule",
    "optimizer.bias_lr_multiplier": "the update rule",
    "optimizer.bias_weight_decay": "the update rule",
    "optimizer.schedule": "the optimiser state's structure",
    "optimizer.drop_factor": "the rate after each drop",
    "optimizer.layer_lr_changes": "the update rule per layer (and the optimiser state's structure)",
    "optimizer.plateau_patience": "the plateau schedule",
    "optimizer.plateau_max_drops": "the plateau schedule",
}

# Fields a restart may change: taken, and each change logged once.
MAY_CHANGE: dict[str, str] = {
    "num_epochs": "extends the run (or ends it earlier, not before the newest checkpoint: refused)",
    "num_train_steps": "extends the run (or ends it earlier, not before the newest checkpoint: refused)",
    "log_every_steps": "reporting only",
    "eval_every_steps": "reporting (defining under the plateau schedule: PLATEAU_DEFINING)",
    "checkpoint_every_steps": "how often the run is saved",
    "keep_checkpoints": "how many are kept",
    "data_dir": "where the same data lives",
    "manual_dir": "where the same data lives",
    "compilation_cache_dir": "compiled programs only",
    "prefetch_batches": "host-device overlap only",
    # Even under the plateau schedule: it compares top-1 errors, counts of
    # 0/1 per example summed exactly (float32 to 2^24 examples) whatever the
    # batches and padding; only an argmax tied to rounding could flip.
    "eval_batch_size": "evaluation is exact whatever the batch",
    "eval_views": "how evaluation reads the same network (defining under the plateau schedule)",
    "mesh": "where the same numbers are computed",
    "model_parallel": "where the same numbers are computed",
    "micro_batch_size": "the same mean gradient, in parts",
    "model.tower_impl": "an implementation switch, same numbers",
    "model.conv1_impl": "an implementation switch, same numbers",
    "model.conv_wgrad": "an implementation switch, same numbers",
    "model.pool_impl": "an implementation switch, same numbers",
    "optimizer.drop_epochs": "future drops only: drops already taken must stay (checked)",
}

# MAY_CHANGE fields that steer the learning rate of a plateau run
# (optimizer.schedule="plateau"): a restart of such a run must keep them.
PLATEAU_DEFINING: dict[str, str] = {
    "eval_every_steps": "when the plateau schedule looks (its patience counts evaluations)",
    "eval_views": "the validation error the plateau schedule compares",
}

# Fields whose default is not what runs did before the field existed: a
# record without the field was trained with this value, not the default.
BEFORE_FIELD: dict[str, Any] = {
    "model.dropout_scaling": "train",  # flax's inverted dropout until the paper's became the default
}

# Reading a trained workdir may also choose what to measure it on.
READ_MAY_CHANGE: frozenset[str] = frozenset(MAY_CHANGE) | {"eval_split"}


def flat_fields(config: ml_collections.ConfigDict | Mapping) -> dict[str, Any]:
    """{"model.width": 0.25, ...}: every leaf, JSON-normalised (tuples as lists)."""
    tree = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    tree = json.loads(json.dumps(tree))

    def walk(node: Mapping, prefix: str) -> Iterable[tuple[str, Any]]:
        for key, value in node.items():
            if isinstance(value, Mapping):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(walk(tree, ""))


def path(workdir: str | os.PathLike) -> epath.Path:
    return paths.as_path(workdir) / CONFIG_FILE


def _git_commit() -> str | None:
    """The checkout's commit (with "-dirty" for uncommitted changes), if it is one."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def _version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("alexnet_jax")
    except metadata.PackageNotFoundError:
        return None


def load(workdir: str | os.PathLike) -> dict | None:
    """The saved record (`config`, `command`, `version`, `git_commit`, `created`,
    `restarts`), or None for a workdir without one."""
    try:
        return json.loads(path(workdir).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise errors.RunError(f"{path(workdir)} cannot be read ({error}): restore it or use a new --workdir") from None


def _write(workdir: str | os.PathLike, record: dict) -> None:
    paths.write_json(path(workdir), record)  # atomically: never a part of the file


def check_writable(workdir: str | os.PathLike, flag: str = "--workdir") -> None:
    """One-line ValueError naming `flag` and the folder `workdir` if it cannot
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


def record_of(config: ml_collections.ConfigDict) -> dict:
    """What config.json holds for a first start."""
    return {
        "config": json.loads(json.dumps(config.to_dict())),
        "command": [sys.executable, *sys.argv],
        "version": _version(),
        "git_commit": _git_commit(),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "restarts": [],
    }


def _differences(saved: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (saved, new)} for the fields of `new` whose values differ."""
    return {k: (saved[k], v) for k, v in new.items() if k in saved and saved[k] != v}


def saved_config(record: Mapping) -> ml_collections.ConfigDict:
    """The config a record was trained with; a field it lacks (added to the
    code after the run started) has its default, the behaviour runs had then,
    or its `BEFORE_FIELD` value where the default is another behaviour."""
    config = config_from_record(record, defaults.get_config())
    saved = flat_fields(record["config"])
    for field, value in BEFORE_FIELD.items():
        if field not in saved:
            _set(config, field, value)
    return config


def _describe(value: Any) -> str:
    return repr(tuple(value)) if isinstance(value, list) else repr(value)


def refusal(workdir: str | os.PathLike, fields: Mapping[str, tuple[Any, Any]]) -> str:
    """One line naming every field the new config may not change."""
    parts = [
        f"config.{field}={_describe(new)} but this run was trained with {_describe(old)}"
        for field, (old, new) in fields.items()
    ]
    return f"{'; '.join(parts)} ({path(workdir)}); use a new --workdir, or pass the run's value"


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
    raises ValueError naming every changed defining field (and any drop of
    the learning rate already taken that would move), else logs each
    accepted change once and records it. A workdir from before config.json
    (checkpoints but no file) resumes with one warning.
    """
    record = load(workdir)
    if record is None:
        if (paths.as_path(workdir) / "checkpoints").is_dir():
            logging.warning(
                "%s has checkpoints but no %s (a run from before it was written): its config cannot be "
                "checked; make sure the overrides match how it was trained",
                workdir,
                CONFIG_FILE,
            )
        elif is_writer:
            _write(workdir, {**record_of(config), **(first_start or {})})
        return
    changed = _differences(flat_fields(saved_config(record)), flat_fields(config))
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
        raise errors.RunError(refusal(workdir, {**refused, **steering}) + why)
    if not changed:
        return
    for field, (old, new) in changed.items():
        logging.info("config.%s changed on this restart: %s -> %s", field, _describe(old), _describe(new))
    if is_writer:
        record["config"] = json.loads(json.dumps(config.to_dict()))
        record["restarts"].append(
            {
                "time": datetime.datetime.now().isoformat(timespec="seconds"),
                "command": [sys.executable, *sys.argv],
                "changed": {k: {"from": old, "to": new} for k, (old, new) in changed.items()},
            }
        )
        _write(workdir, record)


def config_from_record(record: Mapping, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`base` (runs/defaults.py's fields) with every saved value; tuples stay tuples."""
    config = base.copy_and_resolve_references()
    fields = flat_fields(base)
    with config.unlocked():
        for field, value in flat_fields(record["config"]).items():
            if field in fields:  # not a field since removed from the code
                _set(config, field, value)
    return config


def _set(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
    """Sets a dotted field from a JSON value (lists back to tuples where the field is one)."""
    node, _, leaf = field.rpartition(".")
    target = field_value(config, node) if node else config
    target[leaf] = tuple(value) if isinstance(target[leaf], tuple) else value


def field_value(config: ml_collections.ConfigDict, dotted: str) -> Any:
    """config["model"]["width"] for "model.width" (a group for "model")."""
    for part in dotted.split("."):
        config = config[part]
    return config


def config_for_reading(
    workdir: str | os.PathLike,
    flag_config: ml_collections.ConfigDict,
    overrides: Mapping[str, Any],
    config_file_given: bool,
) -> ml_collections.ConfigDict:
    """The config evaluate, predict and retrieval use on `workdir`.

    With a config.json: the saved config, plus the `--config.*` overrides
    (and, when `--config FILE` was given, the file's values) that do not
    change the network; any other difference is refused in one line. A
    workdir without config.json needs `--config FILE` (with the training
    run's overrides), used as given.
    """
    record = load(workdir)
    if record is None:
        if not paths.as_path(workdir).is_dir():  # a typo'd path: not a reason to pass --config
            raise errors.ConfigError(f"--workdir {workdir} does not exist: give the workdir of a trained run")
        if not config_file_given:
            raise errors.RunError(
                f"{path(workdir)} not found (a run from before it was written, or not a workdir): "
                "pass --config with the training run's config file and overrides"
            )
        logging.warning("%s has no %s: using --config as given, unchecked", workdir, CONFIG_FILE)
        return flag_config
    saved = saved_config(record)
    new = flat_fields(flag_config)
    asked = new if config_file_given else {k: v for k, v in flat_fields(overrides).items() if k in new}
    changed = _differences(flat_fields(saved), asked)
    refused = {k: v for k, v in changed.items() if k not in READ_MAY_CHANGE}
    if refused:
        raise errors.RunError(refusal(workdir, refused))
    with saved.unlocked():
        for field, (_, value) in changed.items():
            _set(saved, field, value)
    return saved


def record_exit(workdir: str | os.PathLike, status: str, step: int, error: str | None = None) -> None:
    """Notes in config.json how the run last ended ("finished", "stopped" by
    a signal after saving `step`, "failed" at `step` with `error`, or
    "interrupted": see record_interrupted), so a report need not guess from
    the logs."""
    record = load(workdir)
    if record is None:  # a workdir from before config.json
        return
    record["last_exit"] = {
        "status": status,
        "step": step,
        "error": error,
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    _write(workdir, record)


def record_interrupted(workdir: str | os.PathLike, signal_name: str, newest_step: int) -> None:
    """Notes at the first stop signal that the run is "interrupted" at the
    newest checkpoint's step; the stop's own end (stopped, finished, failed)
    replaces it, so it stays only when the process was ended before (a
    second Ctrl-C, a kill after the signal)."""
    note = f"{signal_name} received, then ended before saving (a second Ctrl-C or a kill)"
    record_exit(workdir, "interrupted", newest_step, f"{note}: a rerun resumes from step {newest_step}")


def record_micro_batch_size(workdir: str | os.PathLike, from_step: int, micro_batch_size: int) -> None:
    """Notes in config.json the micro-batch size the steps from `from_step`
    on compute with (0: the whole batch), when it differs from the last one
    noted: `micro_batch_size=-1` is resolved per machine, and dropout's
    random stream depends on it."""
    record = load(workdir)
    if record is None:  # a workdir from before config.json
        return
    sizes = record.setdefault("micro_batch_sizes", [])
    if sizes and sizes[-1]["micro_batch_size"] == micro_batch_size:
        return
    sizes.append({"from_step": from_step, "micro_batch_size": micro_batch_size})
    _write(workdir, record)
