"""tfds input: any image-classification dataset, per-process, as uint8 batches.

The host resizes the shorter side to `resize_size` and centre-crops a square
(the paper's offline 256x256 step) once, into a preprocessed cache next to
the data (alexnet_jax.data.data_cache; `config.cache_format`), and ships uint8
batches; random crops, flips and mean subtraction run on the device
(alexnet_jax.data.augment).

Each process reads the even part of the split that its devices' rows of the
mesh's 'data' axis hold (`tfds.even_splits(split, parts)[part]`, the part
from alexnet_jax.data.multihost): processes sharing those rows read the same
examples in the same order. The training
stream is a deterministic function of (seed, epoch), so a resumed run starts
at its `StreamPosition` (epoch, batch within it; alexnet_jax.data.
stream_position) and skips the consumed part of that one epoch before
decoding, instead of replaying the stream. A "raw" cache is read by
alexnet_jax.data.raw_records (NumPy, no tf.data): a true per-epoch shuffle.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import errors
from alexnet_jax.data import data_cache, multihost, raw_records, tf_iteration
from alexnet_jax.data.datasets import (  # noqa: F401  (the entry points of this module's users)
    IMAGENET_TARS,
    DatasetUnavailableError,
    check_splits_and_classes,
    get_builder,
    manual_dir,
)
from alexnet_jax.data.stream_position import (  # noqa: F401  (the entry points of this module's users)
    StreamPosition,
    local_batch_size,
    num_examples,
    position_record,
    resume_position,
    steps_per_epoch,
)
from alexnet_jax.files import folder_lock, paths
from alexnet_jax.parallel import processes, sharding
from alexnet_jax.platform import cpu_info

Batch = dict[str, np.ndarray]

# Batches the host makes ahead of the consumer (alexnet_jax.data.tf_iteration:
# a fixed buffer, not autotuned): one in reserve while the next is assembled.
_PREFETCH_BATCHES = 2
_START = StreamPosition()
# Threads gathering a raw cache's records: its copies release the GIL, and a
# few cores copy faster than an accelerator trains; more only help a slow disk.
_RAW_WORKERS = max(1, min(4, cpu_info.usable_cpus()))


def _resize_square(image: tf.Tensor, size: int) -> tf.Tensor:
    """Shorter side to `size`, centre crop `size` x `size`, uint8 RGB."""
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = size / tf.minimum(height, width)
    new_h = tf.maximum(size, tf.cast(tf.round(height * scale), tf.int32))
    new_w = tf.maximum(size, tf.cast(tf.round(width * scale), tf.int32))
    image = tf.image.resize(image, (new_h, new_w), method="bilinear", antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    image = image[top : top + size, left : left + size, :]
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.ensure_shape(image, (size, size, 3))


def _split_part(split: str, part: sharding.DataPart) -> object:
    """The tfds split spec of `part` of `split`."""
    return split if part.count == 1 else tfds.even_splits(split, n=part.count, drop_remainder=False)[part.index]


class _Source(NamedTuple):
    """Undecoded examples of one process part and how to decode them, or its raw records."""

    records: Callable[[tf.Tensor | None], tf.data.Dataset] | None  # file-shuffle seed (None: fixed order)
    decode: Callable[[dict], dict] | None  # -> {"image": uint8 size x size x 3, "label"}
    num_examples: int
    raw: raw_records.RawRecords | None = None  # cache_format "raw": read without tf.data


def _tfds_source(builder: tfds.core.DatasetBuilder, part, size: int) -> _Source:
    """The tfds split itself: images stay encoded until `decode` (so skipping
    reads bytes but decodes nothing); file order fixed (tfds shuffled the
    examples when it prepared the data; epochs reshuffle through the buffer)."""
    ds = builder.as_dataset(split=part, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: {"image": ex["image"], "label": ex["label"]})
    image_feature = builder.info.features["image"]

    def decode(example: dict) -> dict:
        return {
            "image": _resize_square(image_feature.decode_example(example["image"]), size),
            "label": example["label"],
        }

    return _Source(lambda seed: ds, decode, num_examples(builder, part))


def _cache_part(
    builder: tfds.core.DatasetBuilder, split: str, size: int, cache_format: str, part: sharding.DataPart
) -> tuple[str, dict]:
    """The cache folder of `part` of `split` and the description its info must match."""
    path = data_cache.cache_dir(str(builder.data_dir), split, size, cache_format, part.index, part.count)
    description = {"dataset": builder.name, "split": split, "part": part.index, "parts": part.count}
    description["resize_size"] = size
    if cache_format == "raw":
        description.update(data_cache.RAW_LAYOUT)
    return path, description


def cached_part(
    builder: tfds.core.DatasetBuilder, split: str, size: int, cache_format: str, part: sharding.DataPart
) -> tuple[str, dict | None]:
    """The cache folder of `part` of `split` and its info, None when it is not
    written (yet). Raises data_cache.CacheMismatchError when it describes other data."""
    path, description = _cache_part(builder, split, size, cache_format, part)
    info = data_cache.read_info(path)
    if info is not None:
        expected = num_examples(builder, _split_part(split, part))
        data_cache.check(path, info, {**description, "format": cache_format}, expected)
    return path, info


def _source(
    builder: tfds.core.DatasetBuilder, split: str, size: int, cache_format: str, part: sharding.DataPart
) -> _Source:
    """`part` of `split`, from the preprocessed cache (written first if
    missing) or, with `cache_format="none"`, from tfds."""
    source = _tfds_source(builder, _split_part(split, part), size)
    if cache_format == "none":
        return source
    path, description = _cache_part(builder, split, size, cache_format, part)
    if cache_format == "raw" and paths.is_remote(path):  # refused before anything is written
        raise errors.ConfigError(data_cache.RAW_NEEDS_LOCAL.format(path=path))
    info = data_cache.read_info(path)
    if info is None:  # written by one job at a time: another may share the data_dir
        with folder_lock.preparing(f"{path}.lock", f"the {split} cache {path}"):
            if data_cache.read_info(path) is None:
                logging.info("Preprocessing %s once into %s (%s)", split, path, cache_format)
                data_cache.write(path, _decoded(source), source.num_examples, cache_format, description)
        info = data_cache.read_info(path)
    data_cache.check(path, info, {**description, "format": cache_format}, source.num_examples)
    if cache_format == "raw":
        return _Source(None, None, info["num_examples"], raw_records.RawRecords(path))
    files = data_cache.shard_files(path, info)
    return _Source(
        lambda seed: data_cache.records(files, seed), data_cache.decode(cache_format, size), info["num_examples"]
    )


def ensure_cached(
    builder: tfds.core.DatasetBuilder, split: str, size: int, cache_format: str, part: sharding.DataPart
) -> None:
    """Writes the cache of `part` of `split` (with its image sums) unless it exists."""
    _source(builder, split, size, cache_format, part)


def prepare(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> None:
    """Writes this process's part of the preprocessed caches of the train and
    eval splits (no-op when they exist or `config.cache_format` is "none"):
    the first process of each data part writes it, the others sharing the
    part wait (two writers of one folder would race). Process 0 returns
    only once every part is written: it then reads all parts' image sums
    for the training-set statistics (alexnet_jax.data.data_stats)."""
    part = multihost.config_data_part(config)

    def prepare_parts() -> None:
        for split in (config.train_split, config.eval_split):
            prepare_part = functools.partial(_source, builder, split, config.resize_size, config.cache_format, part)
            processes.prepare_once(
                f"the {split} cache, part {part.index} of {part.count}",
                prepare_part,
                prepare_part,  # the part exists now: this only opens it
                is_preparer=part.first,
                error_type=DatasetUnavailableError,
            )

    processes.prepare_everywhere("the preprocessed caches", prepare_parts, error_type=DatasetUnavailableError)


def _decode(records: tf.data.Dataset, source: _Source) -> tf.data.Dataset:
    """`records` of `source` decoded, several at once, in their order."""
    return records.map(source.decode, num_parallel_calls=tf_iteration.parallel_calls(), deterministic=True)


def _decoded(source: _Source) -> tf.data.Dataset:
    """Every example of `source` once, in its fixed order, decoded."""
    return _decode(source.records(None), source)


def full_split_batches(
    builder: tfds.core.DatasetBuilder, split: str, size: int, batch_size: int, cache_format: str = "none"
) -> Iterator[np.ndarray]:
    """Every image of `split` (all data parts), resized as for training, in
    uint8 batches: the input of the training-set statistics. Reads (and
    makes) the whole split's cache; pass "none" where training reads parts of
    the split, rather than caching it twice."""
    source = _source(builder, split, size, cache_format, sharding.DataPart(0, 1))
    if source.raw is not None:
        return (b["image"] for b in raw_records.ordered_batches(source.raw, batch_size, workers=_RAW_WORKERS))
    ds = _decoded(source).map(lambda ex: ex["image"])
    return tf_iteration.numpy_iterator(ds.batch(batch_size), _PREFETCH_BATCHES)


def _epoch_seeds(seed: int, epoch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Seeds of the file order and the example shuffle of `epoch`: distinct for
    every (seed, epoch) pair with epoch < 2**20."""
    base = (tf.constant(seed, tf.int64) * (1 << 20) + epoch) * 2
    return base, base + 1


def train_batches(
    config: ml_collections.ConfigDict,
    builder: tfds.core.DatasetBuilder,
    position: StreamPosition = _START,
) -> Iterator[Batch]:
    """Endless shuffled uint8 training batches of this process, from `position` on.

    Epoch e is a function of (`config.seed`, e) alone: the cache's files and
    then its examples are shuffled with seeds drawn from both, and it holds
    exactly `steps_per_epoch` batches (the rest of the shuffled part waits for
    another epoch). Resuming in epoch e skips its consumed examples before
    they are decoded: a resume reads part of one epoch and decodes nothing
    extra, and batch k is the same whether the run started at 0 or resumed.
    A raw cache (alexnet_jax.data.raw_records) shuffles each epoch with a
    whole permutation of the part drawn from (seed, epoch) instead, and
    resumes by slicing it: no buffer, nothing read twice.
    """
    part = multihost.config_data_part(config)
    source = _source(builder, config.train_split, config.resize_size, config.cache_format, part)
    local_batch = local_batch_size(config, config.batch_size)
    steps = steps_per_epoch(config, builder)
    if source.raw is not None:
        return raw_records.train_batches(
            source.raw,
            local_batch,
            config.seed,
            start_epoch=position.epoch,
            start_batch=position.batch,
            workers=_RAW_WORKERS,
            batches_per_epoch=steps,
        )
    examples_per_epoch = steps * local_batch
    consumed = tf.constant(position.batch * local_batch, tf.int64)

    def epoch_examples(epoch: tf.Tensor) -> tf.data.Dataset:
        file_seed, shuffle_seed = _epoch_seeds(config.seed, epoch)
        ds = source.records(file_seed).shuffle(config.shuffle_buffer_size, seed=shuffle_seed)
        ds = ds.take(examples_per_epoch)
        return ds.skip(tf.where(epoch == position.epoch, consumed, tf.constant(0, tf.int64)))

    ds = tf.data.Dataset.range(position.epoch, 1 << 62).flat_map(epoch_examples)
    ds = _decode(ds, source).batch(local_batch, drop_remainder=True)
    return tf_iteration.numpy_iterator(ds, _PREFETCH_BATCHES)


def eval_batches(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> Iterator[Batch]:
    """Every example of `config.eval_split` exactly once, in fixed-size batches.

    The last batch is padded with zero images whose `mask` is 0; every process
    yields the same number of batches (collectives need all of them). Each
    data part is read by the processes sharing it and fills the same rows of
    the global batch, so every example counts once.
    """
    part = multihost.config_data_part(config)
    local_batch = local_batch_size(config, config.eval_batch_size)
    total = num_examples(builder, config.eval_split)
    num_batches = math.ceil(math.ceil(total / part.count) / local_batch)
    source = _source(builder, config.eval_split, config.resize_size, config.cache_format, part)
    if source.raw is not None:
        return raw_records.eval_batches(source.raw, local_batch, num_batches, workers=_RAW_WORKERS)
    ds = _decoded(source).map(lambda ex: {**ex, "mask": tf.constant(1, tf.int32)})
    size = config.resize_size
    padding = tf.data.Dataset.from_tensors(
        {
            "image": tf.zeros((size, size, 3), tf.uint8),
            "label": tf.constant(0, tf.int64),
            "mask": tf.constant(0, tf.int32),
        }
    ).repeat()
    ds = ds.concatenate(padding).take(num_batches * local_batch).batch(local_batch)
    return tf_iteration.numpy_iterator(ds, _PREFETCH_BATCHES)
