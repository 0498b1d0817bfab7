"""Top-5 classes of image files under a trained model.

    python -m alexnet_jax.predict --workdir runs/digits a.png b.jpg
    python -m alexnet_jax.predict --workdir runs/a --workdir runs/b a.png   # an ensemble

Restores the newest checkpoint in `--workdir` (read with the run's own
config.json, as evaluate does; several `--workdir`s or `--sweep DIR`: the
ensemble, the mean of their class probabilities), preprocesses
each file as the evaluation pipeline does (shorter side to `resize_size`,
centre crop, then the centre crop or 10 views of `config.eval_views`, the
training set's mean subtracted) and prints one line
per file on stdout: `a.png: <class> <p>% | ...` (the top five), nothing
else. A file that is not an image gets a one-line message on stderr; the
exit status is 1 if any file failed. The statistics and class names are the
run's own (`<workdir>/data_stats.npz`): no dataset is read and nothing is
written outside the workdir. An image whose brightness is the opposite of
the training images' (a black-on-white digit; the embedded digits are white
on black) gets a one-line note on stderr.
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
from absl import app, logging

from alexnet_jax import (
    augment,
    checkpointing,
    config_overrides,
    ensemble,
    errors,
    input_pipeline,
    models,
    reading,
    run_stats,
    sharding,
    steps,
)

_TOP_K = 5


def restore_params(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> tuple[models.AlexNet, Any, int]:
    """The model and the parameters alone of the newest checkpoint in
    `workdir`, with its step (the optimiser state is not read)."""
    model = steps.create_model(config)
    abstract = steps.abstract_params(config, model, sharding.make_mesh(config.mesh))
    params, step = checkpointing.restore_params(workdir, abstract)
    return model, params, step


def load_image(path: str, resize_size: int) -> np.ndarray:
    """A file as uint8 RGB, resized like the evaluation pipeline; ValueError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        reason = "not found" if isinstance(error, FileNotFoundError) else "not an image PIL can read (JPEG, PNG, ...)"
        raise errors.ConfigError(f"{path}: {reason}") from None
    # The evaluation pipeline's own resize, so a file is seen as evaluation sees a test image.
    return input_pipeline._resize_square(tf.constant(rgb), resize_size).numpy()


def probabilities(
    model: models.AlexNet,
    params: Any,
    images_uint8: np.ndarray,
    config: ml_collections.ConfigDict,
    stats: augment.DataStats,
) -> np.ndarray:
    """Class probabilities (images, classes) of uint8 `resize_size` images;
    the views (`config.eval_views`) and mean as in evaluation."""
    probs_fn = jax.jit(functools.partial(steps.eval_probs, config=config, model=model, stats=stats))
    return np.asarray(probs_fn(params, images_uint8), np.float32)


def top_k(probs: np.ndarray, k: int = _TOP_K) -> np.ndarray:
    """Class ids of each row's `k` highest probabilities, highest first."""
    return np.argsort(-probs, axis=-1, kind="stable")[:, :k]


def member_probs(
    config: ml_collections.ConfigDict, workdir: str, images_uint8: np.ndarray, stats: augment.DataStats
) -> np.ndarray:
    """One run's class probabilities of images loaded at its `resize_size`,
    with its own statistics and views."""
    model, params, step = restore_params(config, workdir)
    logging.info("%s: checkpoint of step %d", workdir, step)
    return probabilities(model, params, images_uint8, config, stats)


# Mid-grey, and how far from it both an image's mean brightness and the
# training set's must lie, on opposite sides, for the polarity note: far
# enough that photographs (ImageNet's mean is ~115) never get one.
_MID_GREY, _POLARITY_MARGIN = 127.5, 32.0


def polarity_note(image_uint8: np.ndarray, stats: augment.DataStats) -> str | None:
    """A hint when `image` is mostly light where the run's training images
    (the mean it subtracts) are mostly dark, or the reverse; else None."""
    image, trained = float(np.mean(image_uint8)), float(np.mean(np.asarray(stats.mean)))
    both_far = min(abs(image - _MID_GREY), abs(trained - _MID_GREY)) >= _POLARITY_MARGIN
    if not both_far or (image > _MID_GREY) == (trained > _MID_GREY):
        return None

    def tone(mean: float) -> str:
        return "light" if mean > _MID_GREY else "dark"

    return (
        f"mostly {tone(image)} (mean {image:.0f} of 255) but the run's training images are mostly "
        f"{tone(trained)} (mean {trained:.0f}), e.g. the embedded digits are white on black: "
        f"invert the image if its classes look wrong"
    )


@errors.one_line_errors
def main(argv: list[str]) -> None:
    paths = argv[1:]
    if not paths:
        raise errors.UsageError("give one or more image files after the flags")
    tf.config.set_visible_devices([], "GPU")  # TensorFlow only resizes; keep it off the accelerators
    logging.set_verbosity(logging.WARNING)  # orbax's restore chatter would bury the predictions
    workdirs = reading.workdirs()
    configs = [reading.config_for(workdir) for workdir in workdirs]
    ensemble.check_same_task(workdirs, configs, fields=("dataset", "image_folder", "model.num_classes"))
    # The runs' own statistics and class names (no dataset; one from before them needs it once).
    runs = [run_stats.for_reading(config, workdir) for config, workdir in zip(configs, workdirs)]
    names = runs[0].class_names
    if len(names) != configs[0].model.num_classes:
        print(f"note: {workdirs[0]} does not name its classes: printing class ids", file=sys.stderr, flush=True)
        names = tuple(str(i) for i in range(configs[0].model.num_classes))
    readable, first_size = [], []
    for path in paths:
        try:
            first_size.append(load_image(path, configs[0].resize_size))
            readable.append(path)
        except errors.ConfigError as error:  # the other files are still predicted
            print(f"error: {error}", file=sys.stderr, flush=True)
            continue
        note = polarity_note(first_size[-1], runs[0].stats)
        if note:
            print(f"note: {path}: {note}", file=sys.stderr, flush=True)
    if readable:  # one batch per run: this is for a handful of files
        # Each file is decoded once per resize size the runs use, not once per run.
        by_size = {configs[0].resize_size: np.stack(first_size)}
        for config in configs[1:]:
            if config.resize_size not in by_size:
                by_size[config.resize_size] = np.stack([load_image(p, config.resize_size) for p in readable])
        # The ensemble's probabilities: the mean of its runs' (one run: its own).
        members = (member_probs(c, w, by_size[c.resize_size], r.stats) for c, w, r in zip(configs, workdirs, runs))
        probs = sum(members) / len(workdirs)
        for path, row, top in zip(readable, probs, top_k(probs)):
            print(f"{path}: " + " | ".join(f"{names[i]} {100 * row[i]:.1f}%" for i in top), flush=True)
    if len(readable) < len(paths):
        sys.exit(1)


if __name__ == "__main__":
    from alexnet_jax import machine_settings

    machine_settings.apply_machine_settings()  # before JAX starts its backends
    reading.define_flags(several_workdirs=True)
    app.run(main, flags_parser=config_overrides.parse_flags)
