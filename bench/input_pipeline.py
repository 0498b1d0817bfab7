"""Input-pipeline throughput against the train step, in one table from one run.

    python -m bench.input_pipeline                     # 256 photos, 2 passes
    python -m bench.input_pipeline --images 512 --steps 3

Rows: (a) host input, images/s of reading + decoding + resizing ImageNet-sized
JPEGs (500x375, cut from scikit-learn's two sample photographs, so they
compress like photos) from a tfds dataset made in a temporary folder, and of
reading the same images from the preprocessed cache (jpeg, png, raw); (b) the
jitted augmentation alone (`augment.train_inputs`, batch 128, 256x256 uint8
to 224 crops with a mean image and PCA noise); (c) the paper model's train
step at batch 128 (float32, the paper config's own augmentation included);
(d) the augmentation's share of that step; (e) the raw cache's flat records
(alexnet_jax.data.raw_records) against this host's limits: a random-order
gather of 196 kB records from a memory map on one core, the memory copy rate
and `jax.device_put` of a batch onto the CPU device, then the reader itself
(per-epoch shuffle, batch assembly by 1 or 2 threads, the copy onto the
device) from the page cache and, after posix_fadvise(DONTNEED) evicts its
file, from disk. "per core" is images per second of this process's CPU time
(user + system, all threads): on a shared machine, wall rates vary with the
load, CPU time less so.

    python -m bench.input_pipeline --steps 0 --raw_images 2048   # issue 28's table
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time

if __name__ == "__main__":  # quiet TensorFlow's C++ start-up lines (read when it is imported)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from alexnet_jax.data import synthetic  # noqa: E402  (synthetic: ImageNet's training-set size)
from alexnet_jax.platform import cpu_info, machine_settings  # noqa: E402
from bench.step_workers import time_calls  # noqa: E402


def _images_per_sec(make_batches, passes: int) -> tuple[float, float]:
    """Best images/s over `passes` full passes (the first warms the OS cache),
    per wall second and per second of the process's CPU time."""
    rates = []
    for _ in range(passes):
        start, cpu, count = time.perf_counter(), time.process_time(), 0
        for images in make_batches():
            count += images.shape[0]
        rates.append((count / (time.perf_counter() - start), count / (time.process_time() - cpu)))
    return max(rates)


def host_rows(num_images: int, passes: int, data_dir: str) -> list[tuple[str, float, str]]:
    from alexnet_jax.data import data_cache, pipeline
    from alexnet_jax.parallel.sharding import DataPart
    from bench.photos_dataset import BenchPhotos

    BenchPhotos.num_images = num_images
    builder = BenchPhotos(data_dir=data_dir)
    builder.download_and_prepare()
    rows = []
    for fmt in ("none", "jpeg", "png", "raw"):
        start = time.perf_counter()
        pipeline._source(builder, "train", 256, fmt, DataPart(0, 1))  # writes the cache once
        prepare_s = time.perf_counter() - start

        def batches(fmt=fmt):
            return pipeline.full_split_batches(builder, "train", 256, batch_size=128, cache_format=fmt)

        rate, per_core = _images_per_sec(batches, passes)
        if fmt == "none":
            source_bytes = sum(
                os.path.getsize(os.path.join(builder.data_dir, f))
                for f in os.listdir(builder.data_dir)
                if "tfrecord" in f
            )
            note = f"tfds JPEGs {source_bytes / num_images / 1e3:.0f} kB/img"
            rows.append(("(a) tfds 500x375 JPEG: read + decode + resize to 256", rate, note))
            continue
        path = data_cache.cache_dir(str(builder.data_dir), "train", 256, fmt, 0, 1)
        info = data_cache.read_info(path)
        per_image = info["image_bytes"] / info["num_examples"]
        note = (
            f"{per_image / 1e3:.1f} kB/img = {per_image * synthetic.TRAIN_EXAMPLES / 1e9:.0f} GB "
            "for ImageNet train; "
            f"made at {num_images / prepare_s:.0f} img/s; {per_core:.0f} img/s per core"
        )
        what = "read in order (raw_records)" if fmt == "raw" else "read + decode 256x256"
        rows.append((f"(a) preprocessed cache, {fmt}: {what}", rate, note))
    return rows


def _resident(path: str) -> float:
    """The fraction of `path`'s pages in the page cache (mincore)."""
    import ctypes
    import mmap

    size = os.path.getsize(path)
    pages = -(-size // mmap.PAGESIZE)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    with open(path, "rb") as f:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        vector = ctypes.create_string_buffer(pages)
        libc.mincore(address, size, vector)
        libc.munmap(address, size)
    return sum(byte & 1 for byte in vector.raw) / pages


def _evict(path: str) -> float:
    """Drops `path` from the page cache (clean pages; no root needed); returns what stays resident."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return _resident(path)


def _timed(fn, images: int, repeats: int) -> tuple[float, float]:
    """Best (images/s of wall time, images/s of process CPU time) of `repeats`
    calls of `fn`, after one untimed call (first-call costs: page faults, JAX's start)."""
    fn()
    rates = []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        rates.append((images / (time.perf_counter() - start), images / max(time.process_time() - cpu, 1e-9)))
    return max(rates)


def raw_rows(num_images: int, batch: int, data_dir: str, repeats: int) -> list[tuple[str, float, str]]:
    """(e): the limits, then the raw reader from the page cache and from disk."""
    import jax

    from alexnet_jax.data import raw_records

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 256, 3), np.uint8)
    raw_records.write_records(data_dir, (np.roll(image, i) for i in range(num_images)), range(num_images))
    records = raw_records.RawRecords(data_dir)
    row_kb = records.row_bytes / 1e3
    batches = num_images // batch
    order = raw_records.permutation(num_images, 0, 0)
    cpu = jax.devices("cpu")[0]

    def gather():  # a fresh map each time: a mapped page cannot be evicted for the disk rows
        memmap = records.memmap()
        for k in range(batches):
            np.take(memmap, order[k * batch : (k + 1) * batch], axis=0, out=np.empty((batch, 256, 256, 3), np.uint8))

    source, target = np.ones((batch, 256, 256, 3), np.uint8), np.empty((batch, 256, 256, 3), np.uint8)
    gather_rate = _timed(gather, batches * batch, repeats)[1]
    copy_rate = _timed(lambda: [np.copyto(target, source) for _ in range(10)], 10 * batch, repeats)[1]
    put_rate = _timed(
        lambda: [jax.device_put(source, cpu).block_until_ready() for _ in range(10)], 10 * batch, repeats
    )[1]
    # The reader copies each image twice (pread into the batch, device_put onto the device): its ceiling per core.
    ceiling = copy_rate / 2
    rows = [
        (f"(e) limit: random gather of {row_kb:.0f} kB records from a memmap, 1 core", gather_rate, "per core"),
        ("(e) limit: memory copy (np.copyto, 25 MB)", copy_rate, f"{copy_rate * records.row_bytes / 1e9:.1f} GB/s"),
        (f"(e) limit: jax.device_put of a {batch}-image batch onto the CPU", put_rate, "per core"),
    ]

    def read(workers: int, count: int):
        stream = raw_records.train_batches(records, batch, seed=1, workers=workers)
        for _ in range(count):
            jax.device_put(next(stream)["image"], cpu).block_until_ready()
        stream.close()

    for workers in (1, 2):  # from the page cache: the file was just written (and read by gather)
        wall, per_core = _timed(functools.partial(read, workers, batches), batches * batch, repeats)
        note = (
            f"{wall:.0f} img/s wall; {per_core / gather_rate:.1f}x the memmap gather, {per_core / put_rate:.0%} of "
            f"device_put, {per_core / ceiling:.0%} of two copies (memory copy / 2)"
        )
        rows.append((f"(e) raw reader, {workers} worker(s), page cache: per core", per_core, note))
    need = 26_000 * records.row_bytes / 1e9
    for workers in (2, 8):  # more threads: more reads in flight, which a disk needs
        resident = _evict(records.images_path)
        start = time.perf_counter()
        read(workers, batches)
        wall = batches * batch / (time.perf_counter() - start)
        note = f"{wall * records.row_bytes / 1e6:.0f} MB/s read ({resident:.0%} of the file cached before)"
        rows.append(
            (f"(e) raw reader, {workers} workers, from disk: wall", wall, f"{note}; 26,000 img/s: {need:.1f} GB/s")
        )
    return rows


def augment_seconds(batch: int, repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    from alexnet_jax.data import augment

    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8))
    published = augment.published_stats((127.3, 119.7, 104.9))
    mean_image = jnp.asarray(rng.uniform(90, 140, (256, 256, 3)).astype(np.float32))
    stats = published._replace(mean=mean_image)  # the paper's per-pixel mean image
    fn = jax.jit(functools.partial(augment.train_inputs, stats=stats, crop=224, flip=True, pca_std=0.1))
    keys = iter(jax.random.split(jax.random.key(0), repeats + 2))
    return statistics.median(time_calls(lambda: fn(images, next(keys)).block_until_ready(), 2, repeats))


def train_step_seconds(batch: int, timed: int) -> float:
    """Median seconds of the paper config's own step (PCA noise and the
    within-channel norm included, unlike bench/train_step's comparable one)."""
    import jax

    from bench.step_workers import jax_step, synthetic_batch

    step, state, key, config = jax_step("paper", batch, "float32", 0, comparable=False)
    data = synthetic_batch(config, batch)
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], data, key)
        jax.block_until_ready(metrics)

    return statistics.median(time_calls(run, 1, timed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="photos in the generated dataset")
    parser.add_argument("--passes", type=int, default=2, help="passes over them per host row (best kept)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--augment_repeats", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2, help="timed train steps (+1 warm-up); 0: no step rows")
    parser.add_argument("--raw_images", type=int, default=2048, help="256x256 raw records for (e); 0: no (e) rows")
    parser.add_argument("--raw_repeats", type=int, default=3, help="passes per (e) row (best kept)")
    args = parser.parse_args()

    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    with tempfile.TemporaryDirectory() as data_dir:
        rows = host_rows(args.images, args.passes, data_dir)
    if args.raw_images:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_RAW_DIR")) as raw_dir:
            rows += raw_rows(args.raw_images, args.batch, raw_dir, args.raw_repeats)
    augment_s = augment_seconds(args.batch, args.augment_repeats)
    rows.append(
        (
            f"(b) augment.train_inputs alone (jit, batch {args.batch})",
            args.batch / augment_s,
            f"{augment_s * 1e3:.1f} ms/batch, median of {args.augment_repeats}",
        )
    )
    step_s = train_step_seconds(args.batch, args.steps) if args.steps else None
    if step_s is not None:
        rows.append(
            (
                f"(c) paper-model train step (float32, batch {args.batch})",
                args.batch / step_s,
                f"{step_s:.2f} s/step, median of {args.steps}",
            )
        )

    print(f"\n{cpu_info.cpu_description()}; {args.images} photos of 500x375, best of {args.passes} passes per host row")
    print(f"(e): {args.raw_images} raw 256x256 records, best of {args.raw_repeats} passes\n")
    print("| stage | images/s | notes |")
    print("|---|---|---|")
    for name, rate, note in rows:
        print(f"| {name} | {rate:.1f} | {note} |")
    if step_s is not None:
        share = 100 * augment_s / step_s
        print(f"| (d) augmentation's share of a train step | {share:.1f}% | target under 5% |")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    machine_settings.apply_machine_settings(absl_app=False)  # before JAX starts, as alexnet_jax's entry points
    main()
