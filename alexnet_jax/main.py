"""Entry point: the only module with flags.

    python -m alexnet_jax.main --config configs/digits.py --workdir runs/digits
    python -m alexnet_jax.main --config configs/paper.py --workdir runs/paper \
        --config.model.use_lrn=False

Several processes (launch/*.sh, launch/slurm.sbatch) run the same command;
each joins the others through jax.distributed before touching a device.

Exit status: 0 done, 1 an error (errors.Error: one line), 2 a command line
that does not parse (a misspelt flag or field), 3 (preemption.EXIT_STATUS)
stopped by SIGTERM or SIGINT after saving a checkpoint: the same command
resumes the run. Any other exception keeps its traceback.
"""

from __future__ import annotations

import logging as py_logging
import os
import socket
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from alexnet_jax import errors
from alexnet_jax.platform import machine_settings
from alexnet_jax.runs import overrides

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, config.json and TensorBoard event files: local or a URI (gs://...)."
)
config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])
# Several processes (one per GPU, host or TPU VM worker) run the same command;
# these are jax.distributed.initialize's arguments. See launch/ and the README.
flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator (explicit multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (explicit multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes) (explicit multi-process).")
flags.DEFINE_bool(
    "auto_distributed",
    False,
    "Call jax.distributed.initialize() with no arguments: JAX reads them from the cluster "
    "(SLURM, Cloud TPU VM, Open MPI). On by itself in an srun step of several tasks.",
)


class _QuietLibraries(py_logging.Filter):
    """Drops INFO chatter of orbax and tfds (kept: their warnings and errors)
    so the run's own progress lines stay readable."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        noisy = "/orbax/" in record.pathname or "/tensorflow_datasets/" in record.pathname
        return record.levelno >= py_logging.WARNING or not noisy


def _initialize_distributed(jax) -> None:
    """Joins the other processes of a multi-process run, before any JAX
    computation: explicitly from the flags, or from the cluster's environment."""
    explicit = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if any(value is not None for value in explicit):
        if any(value is None for value in explicit):
            raise errors.UsageError("--coordinator_address, --num_processes and --process_id go together")
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    elif FLAGS.auto_distributed or int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:  # srun, several tasks
        jax.distributed.initialize()


def use_compilation_cache(jax, cache_dir: str) -> None:
    """Points JAX's persistent compilation cache at `cache_dir` ("" = none)
    unless the environment already chose one (JAX_COMPILATION_CACHE_DIR)."""
    if cache_dir and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache_dir))


@errors.one_line_errors
def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise errors.UsageError(f"unexpected arguments {argv[1:]}: give every value as a flag (--name=value)")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    import tensorflow as tf

    # tf.data and the summary writers use TensorFlow; keep it off the
    # accelerators so it never takes memory JAX needs.
    tf.config.set_visible_devices([], "GPU")

    import jax

    from alexnet_jax.train import loop, preemption

    _initialize_distributed(jax)
    logging.info(
        "JAX process %d of %d on %s: %d local / %d global %s devices: %s",
        jax.process_index(),
        jax.process_count(),
        socket.gethostname(),
        jax.local_device_count(),
        jax.device_count(),
        jax.default_backend(),
        jax.devices(),
    )
    config = FLAGS.config
    use_compilation_cache(jax, config.compilation_cache_dir)
    try:
        summary = loop.train_and_evaluate(config, FLAGS.workdir)
    except preemption.Preempted as stopped:
        logging.warning("%s (exit status %d)", stopped, preemption.EXIT_STATUS)
        sys.exit(preemption.EXIT_STATUS)
    accuracy = 100.0 * (1.0 - summary["eval_top1_error"])
    print(f"{config.eval_split} top-1 accuracy: {accuracy:.1f}% ({summary['eval_num_examples']} examples)", flush=True)


if __name__ == "__main__":
    machine_settings.apply_machine_settings(huge_pages=True)  # first: before JAX or TensorFlow start
    app.run(main, flags_parser=overrides.parse_flags)
