"""Top-5 classes of image files under a trained model.

    python -m alexnet_jax.predict --config configs/digits.py --workdir runs/digits a.png b.jpg

Restores the newest checkpoint in `--workdir` (the config, with the same
`--config.*` overrides as training, gives the model's shape), preprocesses
each file as the evaluation pipeline does (shorter side to `resize_size`,
centre crop, then the centre crop or 10 views of `config.eval_views`, the
training set's mean subtracted) and prints one line
per file: `a.png: <class> <p>% | ...` (the top five). A file that is not an image gets a
one-line message; the exit status is 1 if any file failed.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from ml_collections import config_flags

from alexnet_jax import augment, checkpointing, data_stats, image_folder, input_pipeline, models, sharding, steps

FLAGS = flags.FLAGS
_TOP_K = 5


def restore_params(config: ml_collections.ConfigDict, workdir: str) -> tuple[models.AlexNet, Any, int]:
    """The model and the parameters of the newest checkpoint in `workdir`, with its step."""
    checkpoints = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(checkpoints):
        raise ValueError(
            f"no checkpoints in {checkpoints}: train first with "
            f"`python -m alexnet_jax.main --config ... --workdir {workdir}`"
        )
    model = steps.create_model(config)
    # steps_per_epoch only shapes the schedule, not the state's structure.
    template = steps.create_train_state(config, model, steps_per_epoch=1, mesh=sharding.make_mesh(config.mesh))
    manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
    state, step = checkpointing.restore_latest(manager, template)
    manager.close()
    if step == 0:
        raise ValueError(f"no finished checkpoint in {checkpoints}: let the training run save one first")
    return model, state.params, step


def class_names(config: ml_collections.ConfigDict) -> list[str]:
    """The dataset's label names (ImageNet: WordNet ids such as n01440764)."""
    import tensorflow_datasets as tfds

    if config.dataset == image_folder.DATASET:  # the class folders' names, without preparing anything
        return list(image_folder.scan(config.image_folder).classes)
    builder = tfds.builder(config.dataset, data_dir=config.data_dir or None)
    return list(builder.info.features["label"].names)


def load_image(path: str, resize_size: int) -> np.ndarray:
    """A file as uint8 RGB, resized like the evaluation pipeline; ValueError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        reason = "not found" if isinstance(error, FileNotFoundError) else "not an image PIL can read (JPEG, PNG, ...)"
        raise ValueError(f"{path}: {reason}") from None
    # The evaluation pipeline's own resize, so a file is seen as evaluation sees a test image.
    return input_pipeline._resize_square(tf.constant(rgb), resize_size).numpy()


def top_k(
    model: models.AlexNet,
    params: Any,
    images_uint8: np.ndarray,
    config: ml_collections.ConfigDict,
    stats: augment.DataStats,
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, class ids) of the likeliest classes per image, highest
    first; the views (`config.eval_views`) and mean as in evaluation."""
    probs_fn = jax.jit(functools.partial(steps.eval_probs, config=config, model=model, stats=stats))
    probs, ids = jax.lax.top_k(probs_fn(params, images_uint8), min(_TOP_K, config.model.num_classes))
    return np.asarray(probs), np.asarray(ids)


def main(argv: list[str]) -> None:
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more image files after the flags")
    tf.config.set_visible_devices([], "GPU")  # TensorFlow only resizes; keep it off the accelerators
    logging.set_verbosity(logging.WARNING)  # orbax's restore chatter would bury the predictions
    config = FLAGS.config
    try:
        model, params, step = restore_params(config, FLAGS.workdir)
    except ValueError as error:
        sys.exit(f"error: {error}")
    names = class_names(config)
    stats = data_stats.load_or_compute(config, input_pipeline.get_builder(config))
    print(f"checkpoint of step {step} in {FLAGS.workdir}", flush=True)
    images, readable = [], []
    for path in paths:
        try:
            images.append(load_image(path, config.resize_size))
            readable.append(path)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
    if images:  # one batch: this is for a handful of files
        probs, ids = top_k(model, params, np.stack(images), config, stats)
        for path, p_row, id_row in zip(readable, probs, ids):
            print(f"{path}: " + " | ".join(f"{names[i]} {100 * p:.1f}%" for p, i in zip(p_row, id_row)), flush=True)
    if len(readable) < len(paths):
        sys.exit(1)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "The training run's workdir (its checkpoints are restored).")
    config_flags.DEFINE_config_file("config", None, "The config file the run trained with.", lock_config=True)
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
