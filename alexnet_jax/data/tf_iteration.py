"""Iterating tf.data pipelines with fixed parallelism, without tf.data's
autotuning thread.

Why: with autotuning on, every tf.data iterator owns a model thread that
wakes on a timer whose period doubles from 10 ms up to a minute. Destroying
the iterator cancels that thread and joins it, but TensorFlow's
CancellationManager (2.21) runs the wake-up callback before it marks itself
cancelled: the woken thread can still read "not cancelled" and sleep out
the rest of its period while the destructor waits. Seen here: 2 of 15
digits quick starts stalled 14 s after their last evaluation (the main
thread in `RootDataset::Iterator::~Iterator`, the model thread in
`Model::OptimizeLoop`'s timed wait), and `python -m bench.tf_data_teardown`
counts such stalls. Every evaluation destroys its iterator, so a long one
could wait up to a minute after it.

So the project's pipelines run with autotuning off and fixed sizes: each
parallel stage uses as many threads as this process may run on (the
ceiling autotuning would tune up to), and prefetch buffers hold a fixed
number of elements, so their memory is known.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.platform import cpu_info


def parallel_calls() -> int:
    """Threads for a parallel tf.data stage: the CPUs this process may run on."""
    return cpu_info.usable_cpus()


def without_autotune(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` with tf.data's autotuning (and so its model thread) off."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def numpy_iterator(ds: tf.data.Dataset, prefetch: int) -> Iterator[Any]:
    """NumPy elements of `ds`, `prefetch` of them made ahead, autotuning off."""
    return iter(tfds.as_numpy(without_autotune(ds.prefetch(prefetch))))
