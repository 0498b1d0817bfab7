"""Predictions of trained runs: a run's parameters restored alone, image
files preprocessed as the evaluation pipeline does, class probabilities of
one run or the mean of an ensemble's, the top classes, and a note for an
image whose brightness is the opposite of the training images'."""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from alexnet_jax import errors
from alexnet_jax.data import augment, pipeline
from alexnet_jax.model import network
from alexnet_jax.parallel import sharding
from alexnet_jax.train import checkpointing, steps

_TOP_K = 5


def restore_params(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> tuple[network.AlexNet, Any, int]:
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
    return pipeline._resize_square(tf.constant(rgb), resize_size).numpy()


def probabilities(
    model: network.AlexNet,
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
