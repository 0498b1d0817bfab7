"""The offline preprocessing cache: every image of a split, already resized
(shorter side to `resize_size`, centre square crop), stored once next to the
data so later epochs and runs never decode the full-size originals again.

Layout: `<tfds data dir>/alexnet_cache/<split>-<part>of<parts>-<size>-<format>/`
with `shard-NNNNN.tfrecord` files (tf.train.Example: encoded `image`, int64
`label`; `SHARD_SIZE` examples each, in the source's order), or for "raw" the
flat records of alexnet_jax.data.raw_records, and `info.json`.
Each data part (alexnet_jax.parallel.sharding.DataPart: the examples the processes
holding the same rows of the mesh's 'data' axis train on) is cached by the
first of those processes while the others sharing it wait; different parts
are prepared in parallel.

Formats: "jpeg" (re-encoded at quality `JPEG_QUALITY`: about 5x smaller than
raw pixels, fast to decode, slightly lossy), "png" (lossless, bigger and
slower to decode) or "raw" (the uint8 pixels themselves, 196 kB per 256x256
image, as fixed-size records in flat files, alexnet_jax.data.raw_records,
instead of TFRecords: nothing to decode or parse, read with NumPy alone, so
a few host cores feed an accelerator that outruns JPEG decoding; needs disk,
and a local or mounted data_dir). The
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
import json
import logging
import os
import socket
from collections.abc import Callable

import tensorflow as tf
import tqdm
from etils import epath

from alexnet_jax import errors
from alexnet_jax.data import raw_records, tf_iteration
from alexnet_jax.data.image_sums import ImageSums, sums_of
from alexnet_jax.files import paths
from alexnet_jax.platform import cpu_info

FORMATS = ("jpeg", "png", "raw", "none")  # "none": no cache, decode the source every epoch
JPEG_QUALITY = 95
SHARD_SIZE = 1024  # examples per file: the unit of per-epoch file shuffling
INFO_FILE = "info.json"
SUMS_FILE = "stats_sums.npz"
_WRITE_BATCH = 64  # images per step of write's loop (and per accumulation task of its sum workers)
# Half the CPUs this process may use (the rest decode and encode), at most 4.
_SUMS_WORKERS = max(1, min(4, cpu_info.usable_cpus() // 2))
_WRITE_PREFETCH = 2  # batches made ahead of write's loop (fixed: tf_iteration)
_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


RAW_NEEDS_LOCAL = (
    "cache_format='raw' reads its records with os.pread, which needs a local or mounted file system, not {path}: "
    "mount the bucket (e.g. gcsfuse) and pass that folder as --config.data_dir, or set --config.cache_format=jpeg"
)
# What a raw cache's info must say: raw caches of TFRecords (before raw_records) are refused by `check`.
RAW_LAYOUT = {"records": "flat"}


class CacheMismatchError(errors.RunError):
    """A cache folder exists but describes other data; the message says what to delete."""


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
    if fmt == "jpeg":
        # 4:4:4 chroma: the resized image keeps its full colour resolution.
        return lambda image: tf.io.encode_jpeg(image, quality=JPEG_QUALITY, chroma_downsampling=False)
    return lambda image: tf.io.encode_png(image, compression=6)


def _proto(message_type: str, **fields: tf.Tensor) -> tf.Tensor:
    """One serialized `message_type` (a protobuf message TensorFlow registers)
    whose repeated or singular `fields` hold the given values, in the graph."""
    values = [tf.reshape(value, [1, -1]) for value in fields.values()]
    sizes = tf.stack([tf.shape(value)[1] for value in values])[None]
    return tf.io.encode_proto(sizes, values, list(fields), message_type)[0]


def example_bytes(stored: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
    """The serialized tf.train.Example {"image": bytes_list [stored], "label":
    int64_list [label]}, built by TensorFlow ops: inside tf.data's parallel map
    it costs no Python per image (the same message `_FEATURES` parses)."""
    image = _proto("tensorflow.Feature", bytes_list=_proto("tensorflow.BytesList", value=stored))
    label = _proto("tensorflow.Feature", int64_list=_proto("tensorflow.Int64List", value=tf.cast(label, tf.int64)))
    entries = [
        _proto("tensorflow.Features.FeatureEntry", key=tf.constant(key), value=feature)
        for key, feature in (("image", image), ("label", label))
    ]
    features = _proto("tensorflow.Features", feature=tf.stack(entries))
    return _proto("tensorflow.Example", features=features)


class _Shards:
    """TFRecord shards of SHARD_SIZE serialized examples (the jpeg and png caches)."""

    def __init__(self, folder: epath.Path):
        self.folder, self.writer, self.count = folder, None, 0

    def extend(self, records, labels) -> None:
        del labels  # inside each record
        for record in records:
            if self.count % SHARD_SIZE == 0:
                self.close()
                name = f"shard-{self.count // SHARD_SIZE:05d}.tfrecord"
                self.writer = tf.io.TFRecordWriter(os.fspath(self.folder / name))
            self.writer.write(record)  # CRC and write in C++, the GIL released
            self.count += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _batches(decoded: tf.data.Dataset, fmt: str):
    """{"label", "image": uint8 [n, H, W, 3], "stored": what the cache holds
    (the images for raw, else serialized records), "stored_bytes": the
    image bytes in each} of `decoded` in order, _WRITE_BATCH at a time.
    Resizing (upstream), encoding and serializing run in tf.data's parallel
    map on every core; what is left per batch for the Python loop is the
    write of its bytes."""
    if fmt == "raw":  # the pixels as they are: raw_records writes them

        def stored(ex: dict) -> dict:
            return {**ex, "stored": ex["image"], "stored_bytes": tf.size(ex["image"])}

    else:
        encode = _encode(fmt)

        def stored(ex: dict) -> dict:
            encoded = encode(ex["image"])
            record = example_bytes(encoded, ex["label"])
            return {**ex, "stored": record, "stored_bytes": tf.strings.length(encoded)}

    ds = decoded.map(stored, num_parallel_calls=tf_iteration.parallel_calls(), deterministic=True)
    return tf_iteration.numpy_iterator(ds.batch(_WRITE_BATCH), _WRITE_PREFETCH)


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
    if in_place and fmt == "raw":
        raise errors.ConfigError(RAW_NEEDS_LOCAL.format(path=path))
    tmp = final if in_place else epath.Path(f"{path}.tmp-{socket.gethostname()}-{os.getpid()}")
    tmp.rmtree(missing_ok=True)
    tmp.mkdir(parents=True)
    output = raw_records.RecordWriter(os.fspath(tmp)) if fmt == "raw" else _Shards(tmp)
    count, total_bytes = 0, 0
    sums, in_flight = ImageSums(), collections.deque()
    try:
        with (
            concurrent.futures.ThreadPoolExecutor(_SUMS_WORKERS) as workers,
            tqdm.tqdm(total=num_examples, desc=f"caching {final.name}", unit="img") as progress,
        ):
            for batch in _batches(decoded, fmt):
                # The sums in the workers (NumPy releases the GIL), a bounded queue of them.
                if len(in_flight) >= 2 * _SUMS_WORKERS:
                    sums.merge(in_flight.popleft().result())
                in_flight.append(workers.submit(sums_of, batch["image"]))
                output.extend(batch["stored"], batch["label"])
                total_bytes += int(batch["stored_bytes"].sum())
                count += len(batch["label"])
                progress.update(len(batch["label"]))
            while in_flight:
                sums.merge(in_flight.popleft().result())
        if count != num_examples:
            raise RuntimeError(f"the source yielded {count} examples for {path}, its metadata says {num_examples}")
        if fmt == "raw":
            output.commit()
        else:
            output.close()
        sums.save(os.fspath(tmp / SUMS_FILE))
        info = {**description, "format": fmt, "num_examples": count, "num_shards": _num_shards(fmt, count)}
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
        if fmt == "raw":
            output.abort()  # nothing left after a commit; the temporary files otherwise
        else:
            output.close()
        if not in_place or read_info(path) is None:  # a partial folder never stays
            tmp.rmtree(missing_ok=True)


def _num_shards(fmt: str, count: int) -> int:
    return 0 if fmt == "raw" else -(-count // SHARD_SIZE)


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
    decode_image = tf.io.decode_jpeg if fmt == "jpeg" else tf.io.decode_png
    return lambda data: decode_image(data, channels=3)


def decode(fmt: str, size: int) -> Callable[[dict], dict]:
    """Undecoded cache example -> {"image": uint8 size x size x 3, "label"}."""
    decode_image = _decode_image(fmt)

    def fn(example: dict) -> dict:
        image = tf.ensure_shape(decode_image(example["image"]), (size, size, 3))
        return {"image": image, "label": example["label"]}

    return fn
