"""Training-set statistics for augmentation: the mean image and the RGB
covariance's eigen-decomposition, computed once and cached next to the data.

`config.data_stats` chooses:
  - "computed": from the training split (host-side `resize_size` images),
    with a progress bar, cached as `<tfds data dir>/alexnet_stats_*.npz`;
    `config.mean_image` picks the per-pixel mean image (the paper's) or its
    per-channel average;
  - "published": PAPER.md's ImageNet values: the per-channel mean
    `config.mean_rgb` and cuda-convnet2's PCA (0..255 units).
"""

from __future__ import annotations

import functools
import logging
import os
import socket

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from alexnet_jax import input_pipeline, multihost_data
from alexnet_jax.augment import DataStats, published_stats


def compute(images_uint8_batches, num_examples: int) -> dict[str, np.ndarray]:
    """Mean image, per-channel mean and RGB covariance eigen-decomposition
    from an iterable of uint8 (batch, H, W, 3) arrays, in float64."""
    image_sum, outer_sum, count = None, np.zeros((3, 3)), 0
    with tqdm.tqdm(total=num_examples, desc="training-set statistics", unit="img") as progress:
        for images in images_uint8_batches:
            images = np.asarray(images, np.float64)
            image_sum = images.sum(0) if image_sum is None else image_sum + images.sum(0)
            pixels = images.reshape(-1, 3)
            outer_sum += pixels.T @ pixels
            count += images.shape[0]
            progress.update(images.shape[0])
    mean_image = image_sum / count
    mean_rgb = mean_image.reshape(-1, 3).mean(0)
    pixels_per_image = mean_image.shape[0] * mean_image.shape[1]
    covariance = outer_sum / (count * pixels_per_image) - np.outer(mean_rgb, mean_rgb)
    eigvals, eigvecs = np.linalg.eigh(covariance)  # ascending, like the published order
    return {
        "mean_image": mean_image.astype(np.float32),
        "mean_rgb": mean_rgb.astype(np.float32),
        "eigvecs": eigvecs.astype(np.float32),
        "sqrt_eigvals": np.sqrt(np.maximum(eigvals, 0.0)).astype(np.float32),
    }


def cache_path(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> str:
    return os.path.join(str(builder.data_dir), f"alexnet_stats_{config.train_split}_{config.resize_size}.npz")


def load_or_compute(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> DataStats:
    """The DataStats `config` asks for, computing and caching them if needed."""
    if config.data_stats == "published":
        return published_stats(config.mean_rgb)
    path = cache_path(config, builder)
    # Process 0 computes them (if not cached yet); the others wait, then read its file.
    multihost_data.prepare_once(
        "the training-set statistics",
        functools.partial(_compute_once, config, builder, path),
        lambda: None,
        is_preparer=jax.process_index() == 0,
        error_type=input_pipeline.DatasetUnavailableError,
    )
    if not os.path.exists(path):
        raise input_pipeline.DatasetUnavailableError(
            f"process 0 wrote the training-set statistics to {path} but this process does not find them: "
            f"every process needs the same data_dir (a shared file system)"
        )
    with np.load(path) as cached:
        mean = cached["mean_image"] if config.mean_image else cached["mean_rgb"]
        return DataStats(
            mean=jnp.asarray(mean),
            eigvecs=jnp.asarray(cached["eigvecs"]),
            sqrt_eigvals=jnp.asarray(cached["sqrt_eigvals"]),
        )


def _compute_once(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, path: str) -> None:
    """Computes the statistics into `path` unless it exists."""
    if os.path.exists(path):
        return
    logging.info("Computing training-set statistics once; cached in %s", path)
    # With several data parts the whole split has no cache of its own: decode it
    # rather than caching it a second time for one pass.
    single_part = multihost_data.config_data_part(config).count == 1
    batches = input_pipeline.full_split_batches(
        builder,
        config.train_split,
        config.resize_size,
        batch_size=256,
        cache_format=config.cache_format if single_part else "none",
    )
    stats = compute(batches, input_pipeline.num_examples(builder, config.train_split))
    # Write-then-rename: a killed run never leaves a half-written cache. Named
    # by host and process: processes of several hosts may share the folder.
    tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}.npz"
    np.savez(tmp, **stats)
    os.replace(tmp, path)
