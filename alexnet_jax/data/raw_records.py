"""Fixed-size raw records: uint8 pixels and int32 labels in flat files, read
without decoding or parsing (the hot path of `cache_format="raw"`).

A records folder holds `images.u8` (count x H x W x 3 uint8, C order),
`labels.i32` (count little-endian int32) and `records.json` (count, shape),
the header written last: a folder without it holds no records. Example i's
pixels are the bytes at i * H * W * 3, so a batch is gathered with one
`os.preadv` per image straight into the batch's buffer (NumPy/OS copies
that release the GIL, so `workers` threads gather in parallel; measured
faster than `np.take` on a memmap, whose page faults cost more than a read).

NumPy and the standard library only, no TensorFlow: a GPU host reads these
without it. The training order is a true shuffle: epoch e is the permutation
drawn from (seed, e), cut into consecutive batches, so any (epoch, batch) is
resumed bit-identically without replaying anything.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import socket
import weakref
from collections.abc import Iterable, Iterator

import numpy as np

from alexnet_jax import errors

IMAGES_FILE = "images.u8"
LABELS_FILE = "labels.i32"
HEADER_FILE = "records.json"
_LABEL_DTYPE = np.dtype("<i4")
_PREFETCH = 2  # batches gathered ahead of the consumer: one in reserve while the next is made
_TAG = 0x52415752  # mixed into the permutation seed: this stream's own, unlike other seeds of (seed, epoch)


def _tmp_name(path: str) -> str:
    # Named by host and process: processes of several hosts may share the folder.
    return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"


class RecordWriter:
    """Appends (image, label) pairs; `commit` makes them the folder's records
    (files renamed into place, the header last), `abort` leaves nothing."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self._final = {name: os.path.join(self.directory, name) for name in (IMAGES_FILE, LABELS_FILE)}
        self._tmp = {name: _tmp_name(path) for name, path in self._final.items()}
        self._files = {name: open(path, "wb") for name, path in self._tmp.items()}
        self.count, self.image_shape = 0, None

    def append(self, image: np.ndarray, label: int) -> None:
        self.extend(np.asarray(image)[None], [label])

    def extend(self, images: np.ndarray, labels) -> None:
        """Appends a batch: uint8 [n, H, W, 3] and n labels, one write each."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise errors.UsageError(f"raw records hold uint8 HxWx3 images, not {images.dtype} {images.shape[1:]}")
        labels = np.asarray(labels, _LABEL_DTYPE)
        if labels.shape != images.shape[:1]:
            raise errors.UsageError(f"{len(images)} images need as many labels, not {labels.shape}")
        shape = tuple(int(d) for d in images.shape[1:])
        if self.image_shape is None:
            self.image_shape = shape
        elif shape != self.image_shape:
            raise errors.UsageError(f"raw records hold images of one shape: {shape} after {self.image_shape}")
        self._files[IMAGES_FILE].write(memoryview(np.ascontiguousarray(images)).cast("B"))
        self._files[LABELS_FILE].write(labels.tobytes())
        self.count += len(images)

    def commit(self) -> int:
        """Flushes to disk (fsync: a crash after the rename never leaves short
        files behind a header), renames, writes the header; returns the count."""
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for name, tmp in self._tmp.items():
            os.replace(tmp, self._final[name])
        header = {"count": self.count, "image_shape": list(self.image_shape or (0, 0, 3)), "image_dtype": "uint8"}
        header["label_dtype"] = _LABEL_DTYPE.str
        header_path = os.path.join(self.directory, HEADER_FILE)
        with open(_tmp_name(header_path), "w") as f:
            json.dump(header, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(_tmp_name(header_path), header_path)
        return self.count

    def abort(self) -> None:
        for f in self._files.values():
            f.close()
        for tmp in self._tmp.values():
            if os.path.exists(tmp):
                os.remove(tmp)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def write_records(directory: str | os.PathLike, images: Iterable[np.ndarray], labels: Iterable[int]) -> int:
    """Writes the records of `images` (uint8 HxWx3, one shape) and `labels`
    into `directory`, complete or not at all; returns the count."""
    with RecordWriter(directory) as writer:
        for image, label in zip(images, labels, strict=True):
            writer.append(image, label)
        return writer.commit()


class RawRecords:
    """The records of a folder: `num_examples` images of `image_shape`, their
    `labels` in memory (4 bytes each), the pixels read on demand."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        header_path = os.path.join(self.directory, HEADER_FILE)
        if not os.path.exists(header_path):
            raise errors.RunError(f"{self.directory} holds no raw records (no {HEADER_FILE}): write them first")
        with open(header_path) as f:
            header = json.load(f)
        self.num_examples: int = int(header["count"])
        self.image_shape: tuple[int, int, int] = tuple(int(d) for d in header["image_shape"])
        self.row_bytes = int(np.prod(self.image_shape))
        images_path = os.path.join(self.directory, IMAGES_FILE)
        sizes = {images_path: self.num_examples * self.row_bytes}
        sizes[os.path.join(self.directory, LABELS_FILE)] = self.num_examples * _LABEL_DTYPE.itemsize
        for path, size in sizes.items():
            found = os.path.getsize(path) if os.path.exists(path) else None
            if found != size:
                raise errors.RunError(
                    f"{path} has {found} bytes, its header {header_path} says {size}: delete {self.directory} "
                    f"(it is rebuilt on the next run)"
                )
        self.labels = np.fromfile(os.path.join(self.directory, LABELS_FILE), _LABEL_DTYPE).astype(np.int32)
        self._fd = os.open(images_path, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self._fd)

    @property
    def images_path(self) -> str:
        return os.path.join(self.directory, IMAGES_FILE)

    def memmap(self) -> np.ndarray:
        """Every image as a read-only (num_examples, H, W, 3) memory map."""
        return np.memmap(self.images_path, np.uint8, "r", shape=(self.num_examples, *self.image_shape))

    def read_into(self, indices: np.ndarray, out: np.ndarray) -> None:
        """Copies the images `indices` into `out` ((len(indices), H, W, 3) uint8, C order)."""
        rows = out.reshape(len(indices), self.row_bytes)
        for row, index in zip(rows, indices.tolist()):
            offset = index * self.row_bytes
            if os.preadv(self._fd, [row], offset) != self.row_bytes:
                raise errors.RunError(f"{self.images_path} ended before image {index}: delete {self.directory}")

    def close(self) -> None:
        self._closer()


def permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s order of the examples: a function of (seed, epoch) alone."""
    return np.random.default_rng([seed % (1 << 63), epoch, _TAG]).permutation(num_examples)


class _Gatherer:
    """Batches gathered by `workers` threads, each thread a slice of a batch,
    up to `_PREFETCH` batches ahead. Each batch has a fresh buffer: a
    consumer may keep it (jax.device_put on CPU can alias host memory)."""

    def __init__(self, records: RawRecords, workers: int):
        if workers < 1:
            raise errors.UsageError(f"workers={workers}: raw records are read by at least one thread")
        self.records, self.workers = records, workers
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="raw_records")
        self.in_flight: collections.deque = collections.deque()

    def submit(self, indices: np.ndarray) -> None:
        image = np.empty((len(indices), *self.records.image_shape), np.uint8)
        bounds = np.linspace(0, len(indices), self.workers + 1).astype(int)
        futures = [
            self.pool.submit(self.records.read_into, indices[lo:hi], image[lo:hi])
            for lo, hi in zip(bounds[:-1], bounds[1:])
            if hi > lo
        ]
        self.in_flight.append((image, self.records.labels[indices], futures))

    def next(self) -> dict[str, np.ndarray]:
        image, label, futures = self.in_flight.popleft()
        for future in futures:
            future.result()
        return {"image": image, "label": label}

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def train_batches(
    records: RawRecords,
    batch_size: int,
    seed: int,
    *,
    start_epoch: int = 0,
    start_batch: int = 0,
    workers: int = 1,
    batches_per_epoch: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """{"image": uint8 [B, H, W, 3], "label": int32 [B]} forever, from batch
    `start_batch` of epoch `start_epoch` on: batch k of epoch e is slice k of
    `permutation(num_examples, seed, e)`. An epoch holds `batches_per_epoch`
    batches (default: every full batch; data parts pass the smallest part's
    count so that every process has as many); the rest of its permutation
    waits for a later epoch."""
    per_epoch = records.num_examples // batch_size if batches_per_epoch is None else batches_per_epoch
    if not 0 < per_epoch <= records.num_examples // batch_size:
        raise errors.UsageError(
            f"{records.num_examples} raw records make {records.num_examples // batch_size} batches of {batch_size}, "
            f"not {per_epoch}: use a smaller batch size"
        )

    def positions() -> Iterator[np.ndarray]:
        epoch, batch = start_epoch + start_batch // per_epoch, start_batch % per_epoch
        while True:
            order = permutation(records.num_examples, seed, epoch)
            for k in range(batch, per_epoch):
                yield order[k * batch_size : (k + 1) * batch_size]
            epoch, batch = epoch + 1, 0

    gatherer = _Gatherer(records, workers)
    try:
        indices = positions()
        for _ in range(_PREFETCH):
            gatherer.submit(next(indices))
        while True:
            batch = gatherer.next()
            gatherer.submit(next(indices))
            yield batch
    finally:
        gatherer.close()


def ordered_batches(records: RawRecords, batch_size: int, *, workers: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Every record once in its stored order, in batches of `batch_size` (the last one shorter)."""
    gatherer = _Gatherer(records, workers)
    try:
        for start in range(0, records.num_examples, batch_size):
            gatherer.submit(np.arange(start, min(start + batch_size, records.num_examples)))
            if len(gatherer.in_flight) > _PREFETCH:
                yield gatherer.next()
        while gatherer.in_flight:
            yield gatherer.next()
    finally:
        gatherer.close()


def eval_batches(
    records: RawRecords, batch_size: int, num_batches: int, *, workers: int = 1
) -> Iterator[dict[str, np.ndarray]]:
    """`num_batches` batches of `batch_size`: every record once in order with
    "mask" 1, the last ones filled up with zero images of label 0, mask 0."""
    batches = ordered_batches(records, batch_size, workers=workers)
    for _ in range(num_batches):
        batch = next(batches, None)
        count = 0 if batch is None else len(batch["label"])
        if count == batch_size:
            yield {**batch, "mask": np.ones(batch_size, np.int32)}
            continue
        padded = {
            "image": np.zeros((batch_size, *records.image_shape), np.uint8),
            "label": np.zeros(batch_size, np.int32),
            "mask": np.zeros(batch_size, np.int32),
        }
        if count:
            padded["image"][:count], padded["label"][:count], padded["mask"][:count] = batch["image"], batch["label"], 1
        yield padded
    batches.close()
