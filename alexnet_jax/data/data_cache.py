"""The offline preprocessing cache: every image of a split, already resized
(shorter side to `resize_size`, centre square crop), stored once next to the
data so later epochs and runs never decode the full-size originals again.

Layout: `<tfds data dir>/alexnet_cache/<split>-<part>of<parts>-<size>-<format>/`
with `shard-NNNNN.tfrecord` files (tf.train.Example: encoded `image`, int64
`label`; `SHARD_SIZE` examples each, in the source's order) and `info.json`.
Each data part (alexnet_jax.parallel.sharding.DataPart: the examples the processes
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

Each part also keeps `stats_sums.npz`: the float64 sums over its images
(`ImageSums`) from which alexnet_jax.data.data_stats finishes the training-set
mean image and RGB covariance without reading the images again; they are
accumulated while the part is written, when the images are decoded anyway
(the resized images before encoding: a jpeg cache's sums are not lossy).
Paths go through `etils.epath`, so the data_dir may be a `gs://` bucket.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import os
import socket
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tqdm
from etils import epath

from alexnet_jax import errors
from alexnet_jax.data import tf_iteration
from alexnet_jax.files import paths
from alexnet_jax.platform import cpu_info

FORMATS = ("jpeg", "png", "raw", "none")  # "none": no cache, decode the source every epoch
JPEG_QUALITY = 95
SHARD_SIZE = 1024  # examples per file: the unit of per-epoch file shuffling
INFO_FILE = "info.json"
SUMS_FILE = "stats_sums.npz"
_SUMS_BATCH = 64  # images per accumulation task of write's worker threads
# Half the CPUs this process may use (the rest decode and encode), at most 4.
_SUMS_WORKERS = max(1, min(4, cpu_info.usable_cpus() // 2))
_WRITE_PREFETCH = 64  # encoded examples made ahead of write's loop (fixed: tf_data_iteration)
_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


class CacheMismatchError(errors.RunError):
    """A cache folder exists but describes other data; the message says what to delete."""


@dataclasses.dataclass
class ImageSums:
    """Float64 sums over uint8 (H, W, 3) images: the per-pixel sum image, the
    3x3 sum of pixel outer products and the image count, from which the mean
    image, per-channel mean and RGB covariance follow (data_stats.finish).

    Every term is an integer and every partial sum stays below 2**53 (up to
    about 2 million 256x256 images), so the float64 sums are exact: the same
    whatever the batching, order or split into parts (`merge`).
    """

    image_sum: np.ndarray | None = None  # (H, W, 3); None before the first image
    outer_sum: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((3, 3)))
    count: int = 0

    def add(self, images_uint8) -> None:
        """Adds a (batch, H, W, 3) array of images (one at a time: small temporaries)."""
        for image in np.asarray(images_uint8):
            image = image.astype(np.float64)
            if self.image_sum is None:
                self.image_sum = np.zeros_like(image)
            self.image_sum += image
            pixels = image.reshape(-1, 3)
            self.outer_sum += pixels.T @ pixels
            self.count += 1

    def merge(self, other: ImageSums) -> None:
        if other.image_sum is None:
            return
        self.image_sum = other.image_sum.copy() if self.image_sum is None else self.image_sum + other.image_sum
        self.outer_sum = self.outer_sum + other.outer_sum
        self.count += other.count

    @property
    def pixel_sum(self) -> np.ndarray:
        """(3,): the sum of every pixel of every image."""
        return self.image_sum.reshape(-1, 3).sum(0)

    def save(self, path: str) -> None:
        paths.write_npz(path, image_sum=self.image_sum, outer_sum=self.outer_sum, count=np.int64(self.count))

    @classmethod
    def load(cls, path: str) -> ImageSums:
        saved = paths.read_npz(path)
        return cls(saved["image_sum"], saved["outer_sum"], int(saved["count"]))


def _sums_of(images_uint8) -> ImageSums:
    sums = ImageSums()
    sums.add(images_uint8)
    return sums


def cache_dir(data_dir: str, split: str, size: int, fmt: str, part: int, parts: int) -> str:
    safe_split = split.replace("/", "_").replace(":", "_")
    return os.fspath(epath.Path(data_dir) / "alexnet_cache" / f"{safe_split}-{part}of{parts}-{size}-{fmt}")


def read_info(path: str) -> dict | None:
    """The cache's description, or None when `path` holds no complete cache."""
    info_file = epath.Path(path) / INFO_FILE
    if not info_file.exists():
        return None
    return json.loads(info_file.read_text())


def read_sums(path: str) -> ImageSums | None:
    """The image sums stored with the complete cache at `path`; None when it
    has none (written before they were kept)."""
    sums_file = epath.Path(path) / SUMS_FILE
    return ImageSums.load(os.fspath(sums_file)) if sums_file.exists() else None


def shard_files(path: str, info: dict) -> list[str]:
    return [os.fspath(epath.Path(path) / f"shard-{i:05d}.tfrecord") for i in range(info["num_shards"])]


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
    cache at `path`, complete or not at all, with a progress bar, and the images'
    `ImageSums` with it (accumulated in worker threads beside the writing;
    exact, so the same in any grouping)."""
    final = epath.Path(path)
    # Locally: a temporary folder renamed into place, named by host and process
    # (processes of several hosts may share the data_dir). An object store
    # (gs://) has no atomic folder rename (it copies object by object): there
    # the folder is written in place, and info.json, written last, is what
    # marks it complete (read_info), as it does locally.
    in_place = paths.is_remote(path)
    tmp = final if in_place else epath.Path(f"{path}.tmp-{socket.gethostname()}-{os.getpid()}")
    tmp.rmtree(missing_ok=True)
    tmp.mkdir(parents=True)
    encode = _encode(fmt)
    encoded = decoded.map(
        lambda ex: (encode(ex["image"]), ex["label"], ex["image"]),
        num_parallel_calls=tf_iteration.parallel_calls(),
        deterministic=True,
    )
    count, writer, total_bytes = 0, None, 0
    sums, pending, in_flight = ImageSums(), [], collections.deque()
    try:
        with (
            concurrent.futures.ThreadPoolExecutor(_SUMS_WORKERS) as workers,
            tqdm.tqdm(total=num_examples, desc=f"caching {final.name}", unit="img") as progress,
        ):

            def add_pending() -> None:  # to the workers (NumPy releases the GIL), a bounded queue of them
                if len(in_flight) >= 2 * _SUMS_WORKERS:
                    sums.merge(in_flight.popleft().result())
                in_flight.append(workers.submit(_sums_of, np.stack(pending)))
                pending.clear()

            for image_bytes, label, image in tf_iteration.numpy_iterator(encoded, _WRITE_PREFETCH):
                if count % SHARD_SIZE == 0:
                    if writer is not None:
                        writer.close()
                    writer = tf.io.TFRecordWriter(os.fspath(tmp / f"shard-{count // SHARD_SIZE:05d}.tfrecord"))
                writer.write(_serialize(image_bytes, label))
                pending.append(image)
                if len(pending) == _SUMS_BATCH:
                    add_pending()
                total_bytes += len(image_bytes)
                count += 1
                progress.update(1)
            if pending:
                add_pending()
            while in_flight:
                sums.merge(in_flight.popleft().result())
        if writer is not None:
            writer.close()
        if count != num_examples:
            raise RuntimeError(f"the source yielded {count} examples for {path}, its metadata says {num_examples}")
        sums.save(os.fspath(tmp / SUMS_FILE))
        info = {**description, "format": fmt, "num_examples": count, "num_shards": -(-count // SHARD_SIZE)}
        info["image_bytes"] = total_bytes
        # info.json last, then the rename: the folder appears only when complete.
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))
        try:
            if not in_place:
                tmp.rename(final)
        except OSError:  # another process finished the same cache first: keep theirs
            if read_info(path) is None:
                raise
        logging.info("Cached %d images (%.1f MB of %s) in %s", count, total_bytes / 1e6, fmt, path)
    finally:
        if writer is not None:
            writer.close()
        if not in_place or read_info(path) is None:  # a partial folder never stays
            tmp.rmtree(missing_ok=True)


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
        at_once = min(4, len(files))  # files read at once, each by its own thread
        ds = file_ds.interleave(
            tf.data.TFRecordDataset,
            cycle_length=at_once,
            block_length=1,
            num_parallel_calls=at_once,
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
