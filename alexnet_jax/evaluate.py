"""Evaluates a saved checkpoint on a whole split.

    python -m alexnet_jax.evaluate --config configs/paper.py --workdir runs/paper \\
        --config.eval_views=ten_view [--config.eval_split=validation]

Restores the newest checkpoint in `--workdir` (the config, with the same
`--config.*` overrides as training, gives the model's shape), evaluates
`config.eval_split` with the training loop's own evaluation step (centre
crop or the paper's 10 views, `config.eval_views`; every example counted
once, the last batch padded and masked) and prints one line:
`validation (ten_view, step 450000): top-1 error 40.66%, top-5 error 18.21% (50000 examples)`.
"""

from __future__ import annotations

import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from alexnet_jax import data_stats, input_pipeline, predict, sharding, steps, train

FLAGS = flags.FLAGS


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict[str, float], int]:
    """(summary, step): `eval_top1_error`, `eval_top5_error`, `eval_loss` and
    `eval_num_examples` of the newest checkpoint in `workdir` on `config.eval_split`."""
    builder = input_pipeline.get_builder(config)
    train.check_dataset(config, builder)  # splits and classes, as the training run checks them
    model, params, step = predict.restore_params(config, workdir)
    mesh = sharding.make_mesh(config.mesh)
    stats = data_stats.load_or_compute(config, builder)
    eval_fn = steps.make_eval_fn(config, model, mesh, stats)
    eval_metrics = train.evaluate(eval_fn, params, input_pipeline.eval_batches(config, builder), mesh)
    return train.eval_summary(eval_metrics), step


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # tf.data only; keep TensorFlow off the accelerators
    logging.set_verbosity(logging.WARNING)  # orbax's restore chatter would bury the result
    config = FLAGS.config
    try:
        summary, step = evaluate_checkpoint(config, FLAGS.workdir)
    except (ValueError, input_pipeline.DatasetUnavailableError) as error:
        sys.exit(f"error: {error}")
    print(
        f"{config.eval_split} ({config.eval_views}, step {step}): "
        f"top-1 error {100 * summary['eval_top1_error']:.2f}%, top-5 error {100 * summary['eval_top5_error']:.2f}% "
        f"({summary['eval_num_examples']} examples)",
        flush=True,
    )


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "The training run's workdir (its newest checkpoint is evaluated).")
    config_flags.DEFINE_config_file("config", None, "The config file the run trained with.", lock_config=True)
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
