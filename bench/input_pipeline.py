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
(d) the augmentation's share of that step.
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
from alexnet_jax.platform import machine_settings  # noqa: E402
from bench.step_workers import time_calls  # noqa: E402


def _images_per_sec(make_batches, passes: int) -> float:
    """Best images/s over `passes` full passes (the first warms the OS cache)."""
    rates = []
    for _ in range(passes):
        start, count = time.perf_counter(), 0
        for images in make_batches():
            count += images.shape[0]
        rates.append(count / (time.perf_counter() - start))
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

        rate = _images_per_sec(batches, passes)
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
            f"made at {num_images / prepare_s:.0f} img/s"
        )
        rows.append((f"(a) preprocessed cache, {fmt}: read + decode 256x256", rate, note))
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
    args = parser.parse_args()

    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    with tempfile.TemporaryDirectory() as data_dir:
        rows = host_rows(args.images, args.passes, data_dir)
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

    print(f"\n{os.cpu_count()} CPUs; {args.images} photos of 500x375, best of {args.passes} passes per host row\n")
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
