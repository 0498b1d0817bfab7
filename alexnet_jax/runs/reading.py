"""What the tools that read trained workdirs (evaluate, predict, retrieval)
share: their `--config`/`--workdir`/`--sweep` flags and the config each
workdir is read with (its own config.json, see record.py)."""

from __future__ import annotations

import os
import sys

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from alexnet_jax import errors
from alexnet_jax.runs import config_file, overrides, sweep_status
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
    config = config_file.config_for_reading(
        workdir, FLAGS.config, config_flags.get_override_values(flag), config_file_given=flag.present > 0
    )
    validate_config(config)  # overrides such as mesh or eval_batch_size are checked as training checks them
    return config
