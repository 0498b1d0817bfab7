"""Synthetic data of the paper's shape, for benchmarks only.

`config.dataset = "synthetic"` feeds random uint8 `(batch, resize_size,
resize_size, 3)` images and labels without any tfds dataset: the input costs
nothing but the host-to-device copy, so images/s against a real dataset's
tells an input-bound run from a compute-bound one. One batch per data part is
made once (seeded) and fed at every step. The training set counts as
ImageNet's 1,281,167 images (epoch-based schedules as in the paper); the
evaluation set is one `eval_batch_size` batch, and its accuracy means nothing.
Augmentation uses the published statistics (there is no training set to
compute any from).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import ml_collections
import numpy as np

from alexnet_jax.data import multihost

NAME = "synthetic"
TRAIN_EXAMPLES = 1_281_167  # ILSVRC-2012 train


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    return TRAIN_EXAMPLES // config.batch_size


def _local_batch(config: ml_collections.ConfigDict, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    # Processes sharing a data part (the towers of one pair) need the same images.
    part = multihost.config_data_part(config)
    local = batch_size // part.count
    rng = np.random.default_rng([seed, part.index])
    size = config.resize_size
    return {
        "image": rng.integers(0, 256, (local, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, config.model.num_classes, (local,), dtype=np.int64),
    }


def train_batches(config: ml_collections.ConfigDict) -> Iterator[dict[str, np.ndarray]]:
    """The same random local batch, endlessly (any position: all are alike)."""
    return itertools.repeat(_local_batch(config, config.batch_size, config.seed))


def eval_batches(config: ml_collections.ConfigDict) -> Iterator[dict[str, np.ndarray]]:
    """One random evaluation batch, every example counted."""
    batch = _local_batch(config, config.eval_batch_size, config.seed + 1)
    batch["mask"] = np.ones(batch["label"].shape, np.int32)
    return iter([batch])
