"""tfds input: any image-classification dataset, per-process, as uint8 batches.

The host decodes, resizes the shorter side to `resize_size` and centre-crops
a square (the paper's offline 256x256 step), and ships uint8 batches; random
crops, flips and mean subtraction run on the device (alexnet_jax.augment).

Each process reads a disjoint, even part of the split
(`tfds.even_splits(split, process_count)[process_index]`). The training
stream is a deterministic function of the seed, so a resumed run skips to
the step it stopped at instead of replaying the epoch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import digits_dataset, image_folder  # noqa: F401  (digits_dataset registers `sklearn_digits`)

Batch = dict[str, np.ndarray]

IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither prepared nor preparable here; the message says why."""


def manual_dir(config: ml_collections.ConfigDict) -> str:
    data_dir = config.data_dir or os.path.expanduser("~/tensorflow_datasets")
    return config.manual_dir or os.path.join(data_dir, "downloads", "manual")


def get_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The prepared tfds builder of `config.dataset`, preparing it if needed.

    imagenet2012 cannot be downloaded: its tar files must be placed in the
    manual directory first, and a missing one raises DatasetUnavailableError
    naming the file, the directory and the command to run. `config.dataset =
    "image_folder"` reads the user's `config.image_folder` (image_folder.py).
    """
    if config.dataset == image_folder.DATASET:
        return image_folder.get_builder(config)
    builder = tfds.builder(config.dataset, data_dir=config.data_dir or None)
    if builder.is_prepared():
        return builder
    download_config = None
    if config.dataset.split(":")[0] == "imagenet2012":
        folder = manual_dir(config)
        missing = [name for name in IMAGENET_TARS if not os.path.exists(os.path.join(folder, name))]
        if missing:
            raise DatasetUnavailableError(
                f"imagenet2012 is not prepared and {', '.join(missing)} not found in {folder}: "
                f"download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
                f"https://image-net.org into that folder (or pass --config.manual_dir=DIR), then rerun "
                f"`python -m alexnet_jax.main --config configs/paper.py --workdir runs/paper` "
                f"(the first run prepares the data through tfds, several hours)"
            )
        download_config = tfds.download.DownloadConfig(manual_dir=folder)
    builder.download_and_prepare(download_config=download_config)
    return builder


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
    return builder.info.splits[split].num_examples


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


def _process_split(split: str) -> str:
    return tfds.even_splits(split, n=jax.process_count(), drop_remainder=False)[jax.process_index()]


def _local_batch_size(global_batch: int) -> int:
    return global_batch // jax.process_count()


def _decoded(
    builder: tfds.core.DatasetBuilder, split: str, size: int, shuffle_files: bool, seed: int, per_process: bool = True
):
    read_config = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=4)
    split = _process_split(split) if per_process else split
    ds = builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config)

    def prepare(example):
        return {"image": _resize_square(example["image"], size), "label": example["label"]}

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def full_split_batches(
    builder: tfds.core.DatasetBuilder, split: str, size: int, batch_size: int
) -> Iterator[np.ndarray]:
    """Every image of `split` (all processes' parts), resized as for training,
    in uint8 batches: the input of the training-set statistics."""
    ds = _decoded(builder, split, size, False, 0, per_process=False).map(lambda ex: ex["image"])
    return iter(tfds.as_numpy(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)))


def train_batches(
    config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, start_step: int = 0
) -> Iterator[Batch]:
    """Endless shuffled uint8 training batches of this process, from `start_step` on.

    The order depends only on `config.seed`, so batch k is the same whether
    the run started at 0 or resumed at k.
    """
    ds = _decoded(builder, config.train_split, config.resize_size, True, config.seed)
    ds = ds.cache() if num_examples(builder, config.train_split) <= 50_000 else ds
    ds = ds.shuffle(config.shuffle_buffer_size, seed=config.seed, reshuffle_each_iteration=True)
    ds = ds.repeat().batch(_local_batch_size(config.batch_size), drop_remainder=True)
    ds = ds.skip(start_step).prefetch(tf.data.AUTOTUNE)
    return iter(tfds.as_numpy(ds))


def eval_batches(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> Iterator[Batch]:
    """Every example of `config.eval_split` exactly once, in fixed-size batches.

    The last batch is padded with zero images whose `mask` is 0; every process
    yields the same number of batches (collectives need all of them).
    """
    local_batch = _local_batch_size(config.eval_batch_size)
    total = num_examples(builder, config.eval_split)
    num_batches = math.ceil(math.ceil(total / jax.process_count()) / local_batch)
    ds = _decoded(builder, config.eval_split, config.resize_size, False, config.seed)
    ds = ds.map(lambda ex: {**ex, "mask": tf.constant(1, tf.int32)})
    size = config.resize_size
    padding = tf.data.Dataset.from_tensors(
        {
            "image": tf.zeros((size, size, 3), tf.uint8),
            "label": tf.constant(0, tf.int64),
            "mask": tf.constant(0, tf.int32),
        }
    ).repeat()
    ds = ds.concatenate(padding).take(num_batches * local_batch).batch(local_batch)
    return iter(tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)))
