"""Training-set statistics for augmentation: the mean image and the RGB
covariance's eigen-decomposition, computed once and cached next to the data.

`config.data_stats` chooses:
  - "computed": from the training split (host-side `resize_size` images),
    cached as `<tfds data dir>/alexnet_stats_*.npz`; `config.mean_image`
    picks the per-pixel mean image (the paper's) or its per-channel average.
    They are finished from the sums (data_cache.ImageSums) that the
    preprocessed cache keeps with each of its parts, accumulated while the
    cache was written: no pass over the images of their own. Without them
    (`cache_format="none"`, or a cache written before the sums were kept)
    one pass over the training split computes them, with a progress bar;
  - "published": docs/paper.md's ImageNet values: the per-channel mean
    `config.mean_rgb` and cuda-convnet2's PCA (0..255 units).

Only a run's first start reads them here: the run keeps its own copy in its
workdir (run_stats.py), which its restarts and readers use.
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
from etils import epath

from alexnet_jax.data import data_cache, multihost, pipeline
from alexnet_jax.data.augment import DataStats, published_stats
from alexnet_jax.files import folder_lock, paths
from alexnet_jax.parallel import processes, sharding


def finish(sums: data_cache.ImageSums) -> dict[str, np.ndarray]:
    """Mean image, per-channel mean and RGB covariance eigen-decomposition
    from the images' sums (float64 until the float32 results)."""
    mean_image = sums.image_sum / sums.count
    mean_rgb = mean_image.reshape(-1, 3).mean(0)
    pixels_per_image = mean_image.shape[0] * mean_image.shape[1]
    covariance = sums.outer_sum / (sums.count * pixels_per_image) - np.outer(mean_rgb, mean_rgb)
    eigvals, eigvecs = np.linalg.eigh(covariance)  # ascending, like the published order
    return {
        "mean_image": mean_image.astype(np.float32),
        "mean_rgb": mean_rgb.astype(np.float32),
        "eigvecs": eigvecs.astype(np.float32),
        "sqrt_eigvals": np.sqrt(np.maximum(eigvals, 0.0)).astype(np.float32),
    }


def compute(images_uint8_batches, num_examples: int) -> dict[str, np.ndarray]:
    """`finish`ed statistics of an iterable of uint8 (batch, H, W, 3) arrays:
    one pass, with a progress bar."""
    sums = data_cache.ImageSums()
    with tqdm.tqdm(total=num_examples, desc="training-set statistics", unit="img") as progress:
        for images in images_uint8_batches:
            sums.add(images)
            progress.update(len(images))
    return finish(sums)


def cache_path(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> str:
    return os.fspath(epath.Path(builder.data_dir) / f"alexnet_stats_{config.train_split}_{config.resize_size}.npz")


def load_or_compute(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> DataStats:
    """The DataStats `config` asks for, computing and caching them if needed."""
    if config.data_stats == "published":
        return published_stats(config.mean_rgb)
    path = epath.Path(cache_path(config, builder))
    # Process 0 computes them (if not cached yet); the others wait, then read its file.
    processes.prepare_once(
        "the training-set statistics",
        functools.partial(_compute_once, config, builder, path),
        lambda: None,
        is_preparer=jax.process_index() == 0,
        error_type=pipeline.DatasetUnavailableError,
    )
    if not path.exists():
        raise pipeline.DatasetUnavailableError(
            f"process 0 wrote the training-set statistics to {path} but this process does not find them: "
            f"every process needs the same data_dir (a shared file system)"
        )
    cached = paths.read_npz(path)
    mean = cached["mean_image"] if config.mean_image else cached["mean_rgb"]
    return DataStats(
        mean=jnp.asarray(mean), eigvecs=jnp.asarray(cached["eigvecs"]), sqrt_eigvals=jnp.asarray(cached["sqrt_eigvals"])
    )


def cached_sums(
    config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder
) -> tuple[data_cache.ImageSums | None, str]:
    """The training split's image sums, combined over the parts of its
    preprocessed cache, or None and the reason there are none.

    With one data part a missing cache is written now (training reads it
    anyway); with several, every part must exist already (input_pipeline.
    prepare has process 0 wait until all are written).
    """
    if config.cache_format == "none":
        return None, 'cache_format is "none"'
    split, size, fmt = config.train_split, config.resize_size, config.cache_format
    parts = multihost.config_data_part(config).count
    if parts == 1:
        pipeline.ensure_cached(builder, split, size, fmt, sharding.DataPart(0, 1))
    total = data_cache.ImageSums()
    for index in range(parts):
        path, info = pipeline.cached_part(builder, split, size, fmt, sharding.DataPart(index, parts))
        if info is None:
            return None, f"the cache part {path} is not written"
        sums = data_cache.read_sums(path)
        if sums is None:
            return None, f"the cache part {path} has no image sums (written before they were kept)"
        total.merge(sums)
    expected = pipeline.num_examples(builder, split)
    if total.count != expected:  # the parts' infos matched, so this would be a damaged sums file
        return None, f"the cache parts' sums count {total.count} images, the split has {expected}"
    return total, ""


def _compute_once(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, path: epath.Path) -> None:
    """Computes the statistics into `path` unless it exists: one job at a
    time (another may share the data_dir, and write them while this one waits)."""
    if path.exists():
        return
    with folder_lock.preparing(f"{path}.lock", f"the training-set statistics {path}"):
        if not path.exists():
            _compute(config, builder, path)


def _compute(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, path: epath.Path) -> None:
    """Computes the statistics into `path`."""
    sums, why_not = cached_sums(config, builder)
    if sums is not None:
        logging.info("Training-set statistics from the preprocessed cache's image sums (no pass); cached in %s", path)
        stats = finish(sums)
    else:
        logging.info("Computing training-set statistics in one pass over the images (%s); cached in %s", why_not, path)
        # With several data parts the whole split has no cache of its own: decode it
        # rather than caching it a second time for one pass.
        single_part = multihost.config_data_part(config).count == 1
        batches = pipeline.full_split_batches(
            builder,
            config.train_split,
            config.resize_size,
            batch_size=256,
            cache_format=config.cache_format if single_part else "none",
        )
        stats = compute(batches, pipeline.num_examples(builder, config.train_split))
    # Write-then-rename: a killed run never leaves a half-written cache. Named
    # by host and process: processes of several hosts may share the folder.
    tmp = epath.Path(f"{path}.tmp-{socket.gethostname()}-{os.getpid()}.npz")
    paths.write_npz(tmp, **stats)
    tmp.replace(path)
