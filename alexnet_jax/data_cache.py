"""The offline preprocessing cache: every image of a split, already resized
(shorter side to `resize_size`, centre square crop), stored once next to the
data so later epochs and runs never decode the full-size originals again.

Layout: `<tfds data dir>/alexnet_cache/<split>-<part>of<parts>-<size>-<format>/`
with `shard-NNNNN.tfrecord` files (tf.train.Example: encoded `image`, int64
`label`; `SHARD_SIZE` examples each, in the source's order) and `info.json`.
Each data part (alexnet_jax.sharding.DataPart: the examples the processes
holding the same rows of the mesh's 'data' axis train on) is cached by the
first of those processes while the others sharing it wait; different parts
are prepared in parallel.

Formats: "jpeg" (re-encoded at quality `JPEG_QUALITY`: about 5x smaller than
raw pixels, fast to decode, slightly lossy), "png" (lossless, bigger and
slower to decode) or "raw" (the uint8 pixels themselves, 196 kB per 256x256
image: nothing to decode, so a few host cores can feed an accelerator that
outruns JPEG decoding; needs disk and, for the shuffle buffer, memory). The
cache is written into a temporary folder and renamed into place only when
complete: a killed preparation leaves no folder that a later run would trust
(its leftover `*.tmp-*` folder is ignored).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections.abc import Callable

import tensorflow as tf
import tqdm

FORMATS = ("jpeg", "png", "raw", "none")  # "none": no cache, decode the source every epoch
JPEG_QUALITY = 95
SHARD_SIZE = 1024  # examples per file: the unit of per-epoch file shuffling
INFO_FILE = "info.json"
_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


class CacheMismatchError(ValueError):
    """A cache folder exists but describes other data; the message says what to delete."""


def cache_dir(data_dir: str, split: str, size: int, fmt: str, part: int, parts: int) -> str:
    safe_split = split.replace("/", "_").replace(":", "_")
    return os.path.join(data_dir, "alexnet_cache", f"{safe_split}-{part}of{parts}-{size}-{fmt}")


def read_info(path: str) -> dict | None:
    """The cache's description, or None when `path` holds no complete cache."""
    try:
        with open(os.path.join(path, INFO_FILE)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def shard_files(path: str, info: dict) -> list[str]:
    return [os.path.join(path, f"shard-{i:05d}.tfrecord") for i in range(info["num_shards"])]


def _encode(fmt: str) -> Callable[[tf.Tensor], tf.Tensor]:
    if fmt == "raw":  # the pixels with their shape and dtype, as a TensorProto
        return tf.io.serialize_tensor
    if fmt == "jpeg":
        # 4:4:4 chroma: the resized image keeps its full colour resolution.
        return lambda image: tf.io.encode_jpeg(image, quality=JPEG_QUALITY, chroma_downsampling=False)
    return lambda image: tf.io.encode_png(image, compression=6)


def _serialize(encoded: bytes, label: int) -> bytes:
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
            }
        )
    )
    return example.SerializeToString()


def write(path: str, decoded: tf.data.Dataset, num_examples: int, fmt: str, description: dict) -> None:
    """Writes `decoded` ({"image": uint8 HxWx3, "label"}, fixed order) as the
    cache at `path`, atomically, with a progress bar."""
    tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    encode = _encode(fmt)
    encoded = decoded.map(
        lambda ex: (encode(ex["image"]), ex["label"]), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    ).prefetch(tf.data.AUTOTUNE)
    count, writer, total_bytes = 0, None, 0
    try:
        with tqdm.tqdm(total=num_examples, desc=f"caching {os.path.basename(path)}", unit="img") as progress:
            for image_bytes, label in encoded.as_numpy_iterator():
                if count % SHARD_SIZE == 0:
                    if writer is not None:
                        writer.close()
                    writer = tf.io.TFRecordWriter(os.path.join(tmp, f"shard-{count // SHARD_SIZE:05d}.tfrecord"))
                writer.write(_serialize(image_bytes, label))
                total_bytes += len(image_bytes)
                count += 1
                progress.update(1)
        if writer is not None:
            writer.close()
        if count != num_examples:
            raise RuntimeError(f"the source yielded {count} examples for {path}, its metadata says {num_examples}")
        info = {**description, "format": fmt, "num_examples": count, "num_shards": -(-count // SHARD_SIZE)}
        info["image_bytes"] = total_bytes
        # info.json last, then the rename: the folder appears only when complete.
        with open(os.path.join(tmp, INFO_FILE), "w") as f:
            json.dump(info, f, indent=1)
        try:
            os.replace(tmp, path)
        except OSError:  # another process finished the same cache first: keep theirs
            if read_info(path) is None:
                raise
        logging.info("Cached %d images (%.1f MB of %s) in %s", count, total_bytes / 1e6, fmt, path)
    finally:
        if writer is not None:
            writer.close()
        shutil.rmtree(tmp, ignore_errors=True)


def check(path: str, info: dict, description: dict, num_examples: int) -> None:
    """Raises CacheMismatchError when the cache at `path` is not of this data."""
    expected = {**description, "num_examples": num_examples}
    wrong = {k: (info.get(k), v) for k, v in expected.items() if info.get(k) != v}
    if wrong:
        field, (found, want) = next(iter(wrong.items()))
        raise CacheMismatchError(
            f"the preprocessed cache {path} has {field}={found!r} but the data has {want!r}: delete that folder "
            f"(it is rebuilt on the next run) or set --config.cache_format=none"
        )


def records(files: list[str], shuffle_seed: tf.Tensor | None) -> tf.data.Dataset:
    """The cache's undecoded examples: files in order (`shuffle_seed` None) or
    in an order drawn from `shuffle_seed`, several read at once."""
    file_ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_seed is None:
        ds = tf.data.TFRecordDataset(file_ds)
    else:
        file_ds = file_ds.shuffle(len(files), seed=shuffle_seed)
        ds = file_ds.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(4, len(files)),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    return ds.map(lambda record: tf.io.parse_single_example(record, _FEATURES))


def _decode_image(fmt: str) -> Callable[[tf.Tensor], tf.Tensor]:
    if fmt == "raw":
        return lambda data: tf.io.parse_tensor(data, tf.uint8)
    decode_image = tf.io.decode_jpeg if fmt == "jpeg" else tf.io.decode_png
    return lambda data: decode_image(data, channels=3)


def decode(fmt: str, size: int) -> Callable[[dict], dict]:
    """Undecoded cache example -> {"image": uint8 size x size x 3, "label"}."""
    decode_image = _decode_image(fmt)

    def fn(example: dict) -> dict:
        image = tf.ensure_shape(decode_image(example["image"]), (size, size, 3))
        return {"image": image, "label": example["label"]}

    return fn
