"""How long destroying a tf.data iterator takes, with autotuning on and off.

One table from one run: tf.data's default (autotuning on) against the
project's iterators (alexnet_jax.data.tf_iteration: autotuning off).

    python -m bench.tf_data_teardown                  # 20 iterators per row, 2 s each
    python -m bench.tf_data_teardown --life 8 --rounds 10

Each round makes an iterator over the same pipeline (a parallel map of
64x64x3 images, batches of 32), reads from it for `--life` seconds at about
100 batches/s, and times `del` on it. With autotuning on, the iterator's
model thread can miss its cancellation and sleep out its timer while the
destructor waits (alexnet_jax/data/tf_iteration.py says why); the rows count
how often a destruction took over 0.1 s (_STALL_S), and the longest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

if __name__ == "__main__":  # quiet TensorFlow's C++ start-up lines (read when it is imported)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from alexnet_jax.data import tf_iteration  # noqa: E402
from alexnet_jax.platform.cpu_info import cpu_description  # noqa: E402

_STALL_S = 0.1  # a destruction slower than this waited for a thread


def _pipeline(parallel_calls: int) -> tf.data.Dataset:
    images = tf.data.Dataset.range(1 << 40).map(
        lambda i: tf.random.stateless_uniform([64, 64, 3], seed=tf.stack([i, 0])), num_parallel_calls=parallel_calls
    )
    return images.batch(32)


def _autotuned():
    return iter(tfds.as_numpy(_pipeline(tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)))


def _fixed():
    return tf_iteration.numpy_iterator(_pipeline(tf_iteration.parallel_calls()), prefetch=2)


def teardown_seconds(make_iterator, life: float, rounds: int) -> list[float]:
    """Seconds `del` took on each of `rounds` iterators read for `life` s."""
    times = []
    for _ in range(rounds):
        iterator = make_iterator()
        start = time.perf_counter()
        while time.perf_counter() - start < life:
            next(iterator)
            time.sleep(0.01)
        start = time.perf_counter()
        del iterator
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--life", type=float, default=2.0, help="seconds each iterator is read before it is destroyed")
    parser.add_argument("--rounds", type=int, default=20, help="iterators per row")
    args = parser.parse_args()
    rows = [
        ("tf.data's default: autotuning on", teardown_seconds(_autotuned, args.life, args.rounds)),
        ("alexnet_jax: autotuning off, fixed sizes", teardown_seconds(_fixed, args.life, args.rounds)),
    ]
    print(f"\nmachine: {cpu_description()}; tensorflow {tf.__version__}")
    print(f"{args.rounds} iterators per row, each read for {args.life:g} s, then destroyed\n")
    print(f"| iterator | destructions over {_STALL_S:g} s | median (s) | longest (s) |")
    print("|---|---|---|---|")
    for name, times in rows:
        stalls = sum(t > _STALL_S for t in times)
        print(f"| {name} | {stalls} of {len(times)} | {statistics.median(times):.3f} | {max(times):.3f} |")


if __name__ == "__main__":
    main()
