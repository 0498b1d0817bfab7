"""What the tools that read trained workdirs (evaluate, predict, retrieval)
share: their `--config`/`--workdir`/`--sweep` flags and the config each
workdir is read with (its own config.json, config_json.py), by the reading policy
(`config_for_reading`): only field_rules.READ_MAY_CHANGE fields may differ."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from alexnet_jax import errors
from alexnet_jax.files import paths
from alexnet_jax.runs import config_json, overrides, sweep_status
from alexnet_jax.runs.config_fields import differences, flat_fields, refusal, set_field
from alexnet_jax.runs.field_rules import READ_MAY_CHANGE
from alexnet_jax.runs.validation import validate_config

FLAGS = flags.FLAGS
# Without --config the reading tools start from every field's default (the
# workdir's config.json then replaces them); --config.FIELD=VALUE still works.
# The schema module is itself a config file (it defines get_config).
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "defaults.py")


def define_flags(several_workdirs: bool = False) -> None:
    """--workdir (repeatable for ensembles, with --sweep), and an optional --config."""
    # With a default file, config_flags applies sys.argv's overrides here, at
    # definition: a misspelt field would be a traceback before parse_flags runs.
    overrides.refuse_unknown_overrides(sys.argv[1:])
    config_flags.DEFINE_config_file(
        "config",
        DEFAULT_CONFIG,
        "Optional: the workdir's config.json is used. Needed only for a workdir without one "
        "(give the training run's config file and overrides).",
        lock_config=True,
    )
    if several_workdirs:
        flags.DEFINE_multi_string("workdir", [], "A trained run's workdir; repeat it for an ensemble.")
        flags.DEFINE_string("sweep", None, "A launch.sweep --workdir: every finished variant joins the ensemble.")
    else:
        flags.DEFINE_string("workdir", None, "The trained run's workdir (its newest checkpoint is restored).")
        flags.mark_flag_as_required("workdir")


def workdirs() -> list[str]:
    """The runs named by --workdir (in order), then the finished variants of
    --sweep; each variant left out is named in one warning, with its status
    (not finished, failed at step N, stopped, not started, ...)."""

    def skipped(workdir: str, status: str) -> None:
        logging.warning("--sweep %s: skipping %s: %s", FLAGS.sweep, os.path.basename(workdir), status)

    runs = list(FLAGS.workdir)
    if FLAGS.sweep:
        runs += sweep_status.finished_workdirs(FLAGS.sweep, skipped)
    if not runs:
        raise errors.UsageError(
            "give a trained run with --workdir RUN (repeat it, or add --sweep DIR, for an ensemble)"
        )
    return runs


def config_for(workdir: str) -> ml_collections.ConfigDict:
    """The config `workdir` was trained with, plus the command line's
    overrides that do not change the network (one-line ValueError for
    those that do, or for a value validate_config refuses)."""
    flag = FLAGS["config"]
    config = config_for_reading(
        workdir, FLAGS.config, config_flags.get_override_values(flag), config_file_given=flag.present > 0
    )
    validate_config(config)  # overrides such as mesh or eval_batch_size are checked as training checks them
    return config


def config_for_reading(
    workdir: str | os.PathLike,
    flag_config: ml_collections.ConfigDict,
    flag_overrides: Mapping[str, Any],
    config_file_given: bool,
) -> ml_collections.ConfigDict:
    """The config evaluate, predict and retrieval use on `workdir`.

    With a config.json: the saved config, plus the `--config.*` overrides
    (and, when `--config FILE` was given, the file's values) that do not
    change the network; any other difference is refused in one line. A
    workdir without config.json needs `--config FILE` (with the training
    run's overrides), used as given.
    """
    record = config_json.load(workdir)
    if record is None:
        if not paths.as_path(workdir).is_dir():  # a typo'd path: not a reason to pass --config
            raise errors.ConfigError(f"--workdir {workdir} does not exist: give the workdir of a trained run")
        if not config_file_given:
            raise errors.RunError(
                f"{config_json.path(workdir)} not found (a run from before it was written, or not a workdir): "
                "pass --config with the training run's config file and overrides"
            )
        logging.warning("%s has no %s: using --config as given, unchecked", workdir, config_json.CONFIG_FILE)
        return flag_config
    saved = config_json.saved_config(record)
    new = flat_fields(flag_config)
    asked = new if config_file_given else {k: v for k, v in flat_fields(flag_overrides).items() if k in new}
    changed = differences(flat_fields(saved), asked)
    refused = {k: v for k, v in changed.items() if k not in READ_MAY_CHANGE}
    if refused:
        raise errors.RunError(refusal(config_json.path(workdir), refused))
    with saved.unlocked():
        for field, (_, value) in changed.items():
            set_field(saved, field, value)
    return saved
