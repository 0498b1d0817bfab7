"""Entry point: the only module with flags.

    python -m alexnet_jax.main --config configs/digits.py --workdir runs/digits
    python -m alexnet_jax.main --config configs/paper.py --workdir runs/paper \
        --config.model.use_lrn=False
"""

from __future__ import annotations

import logging as py_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints and TensorBoard event files.")
config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(py_logging.Filter):
    """Drops INFO chatter of orbax and tfds (kept: their warnings and errors)
    so the run's own progress lines stay readable."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        noisy = "/orbax/" in record.pathname or "/tensorflow_datasets/" in record.pathname
        return record.levelno >= py_logging.WARNING or not noisy


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    import tensorflow as tf

    # tf.data and the summary writers use TensorFlow; keep it off the
    # accelerators so it never takes memory JAX needs.
    tf.config.set_visible_devices([], "GPU")

    import jax

    from alexnet_jax import input_pipeline, train

    logging.info(
        "JAX process %d of %d, %d local / %d global devices: %s",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices(),
    )
    config = FLAGS.config
    try:
        summary = train.train_and_evaluate(config, FLAGS.workdir)
    except (ValueError, input_pipeline.DatasetUnavailableError, FloatingPointError) as error:
        sys.exit(f"error: {error}")
    accuracy = 100.0 * (1.0 - summary["eval_top1_error"])
    print(f"{config.eval_split} top-1 accuracy: {accuracy:.1f}% ({summary['eval_num_examples']} examples)", flush=True)


if __name__ == "__main__":
    app.run(main)
