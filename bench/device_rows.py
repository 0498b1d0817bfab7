"""The measurements of bench/device_check.py: the paper step on synthetic
input already on the device, the raw reader alone, and the step fed by the
reader through the training loop's host-to-device prefetch.

Imports only what a GPU node without TensorFlow has (jax, flax, optax,
numpy, ml_collections for configs/paper.py): no tensorflow,
tensorflow_datasets or clu, not even transitively. The step is therefore
`steps.gradients` and the update, i.e. `steps.train_step` without its clu
metrics collection (a few reductions of the [batch, 1000] logits; the loss
stays, so the logits are used).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Iterator

import numpy as np

from alexnet_jax.data import raw_records

TRAIN_STEPS_PER_EPOCH = 10_000  # any: it only places the schedule's epoch boundaries


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each row does: bounded counts and a time budget per row."""

    batch: int
    warmup: int  # untimed steps (or batches read) before each timed row
    max_steps: int  # timed steps at most per step row
    step_seconds: float  # time budget of a timed step row (checked before each step)
    read_seconds: float  # time budget of a reader row
    cache_images: int  # raw records written for the reader rows
    workers: tuple[int, ...]  # reader threads per reader row


def paper_config(batch: int, dtype: str):
    """configs/paper.py as trained, at `batch`, `dtype`, one device, whole batch per step."""
    from configs import paper

    config = paper.get_config()
    config.batch_size = batch
    config.micro_batch_size = 0  # no micro-batches (GPU's default; explicit so CPU's AUTO cannot pick any)
    config.model.dtype = dtype
    config.mesh = (1, 1)
    return config


def synthetic_host_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
    """Random uint8 images of the host-side size (resize_size) and int32 labels."""
    rng = np.random.default_rng(seed)
    size = config.resize_size
    return {
        "image": rng.integers(0, 256, (config.batch_size, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, config.model.num_classes, (config.batch_size,), dtype=np.int32),
    }


class PaperStep:
    """The paper config's jitted train step on one device, compiled once for
    the host-side batch shape, with its state (donated from step to step)."""

    def __init__(self, batch: int, dtype: str):
        import jax
        import optax

        from alexnet_jax.data import augment
        from alexnet_jax.parallel import sharding
        from alexnet_jax.train import steps

        self.dtype = dtype
        self.config = config = paper_config(batch, dtype)
        self.mesh = sharding.make_mesh(config.mesh)
        self.state = steps.create_train_state(config, steps.create_model(config), TRAIN_STEPS_PER_EPOCH, self.mesh)
        stats = augment.published_stats(config.mean_rgb)  # synthetic data: any fixed statistics
        noise_end = steps.noise_end_step(config, TRAIN_STEPS_PER_EPOCH)

        def step(state, batch, key):
            _, grads, logits = steps.gradients(state, batch, key, config, stats, noise_end)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
            return state.apply_gradients(grads=grads), loss

        self.key = jax.random.key(0)
        self.device_batch = sharding.global_batch(synthetic_host_batch(config), self.mesh)
        start = time.perf_counter()
        jitted = jax.jit(step, donate_argnums=0)
        self.compiled = jitted.lower(self.state, self.device_batch, self.key).compile()
        self.compile_s = time.perf_counter() - start
        self.step_gib = _step_gib(self.compiled)

    def run(self, batches: Iterator, sizes: Sizes) -> dict:
        """Images/s and ms/step of up to `sizes.max_steps` steps within
        `sizes.step_seconds`, after `sizes.warmup` untimed ones. One step stays
        in flight (the device never waits on Python), as in training."""
        import jax

        loss = None
        for _ in range(sizes.warmup):
            self.state, loss = self.compiled(self.state, next(batches), self.key)
        jax.block_until_ready(loss)
        done, pending, start = 0, loss, time.perf_counter()
        while done < sizes.max_steps and (done == 0 or time.perf_counter() - start < sizes.step_seconds):
            self.state, loss = self.compiled(self.state, next(batches), self.key)
            jax.block_until_ready(pending)
            pending, done = loss, done + 1
        jax.block_until_ready(pending)
        elapsed = time.perf_counter() - start
        if not np.isfinite(float(pending)):
            raise RuntimeError(f"the {self.dtype} step's loss is {float(pending)}: the step is broken")
        return {"images_per_s": done * self.config.batch_size / elapsed, "ms_per_step": 1000 * elapsed / done}

    def run_synthetic(self, sizes: Sizes) -> dict:
        """`run` on the same device-resident batch every step: the step alone."""
        return self.run(itertools.repeat(self.device_batch), sizes)

    def run_fed(self, records: raw_records.RawRecords, workers: int, sizes: Sizes) -> dict:
        """`run` on batches the raw reader gathers with `workers` threads, put
        on the device by the training loop's prefetch (`config.prefetch_batches` ahead)."""
        from alexnet_jax.parallel import sharding

        host = raw_records.train_batches(records, self.config.batch_size, self.config.seed, workers=workers)
        try:
            return self.run(sharding.prefetch_to_device(host, self.mesh, self.config.prefetch_batches), sizes)
        finally:
            host.close()  # stops the reader's threads


def _step_gib(compiled) -> float | None:
    """Device memory XLA's analysis gives the compiled step (GiB), where it gives one."""
    try:
        m = compiled.memory_analysis()
        used = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    return used / 2**30


def write_cache(directory: str, count: int, size: int, num_classes: int) -> raw_records.RawRecords:
    """`count` raw records of random size x size images in `directory`, read
    through once so that they are in the page cache."""
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, (min(count, 256), size, size, 3), dtype=np.uint8)  # contents do not matter
    labels = rng.integers(0, num_classes, count, dtype=np.int32)
    raw_records.write_records(directory, (block[i % len(block)] for i in range(count)), labels.tolist())
    records = raw_records.RawRecords(directory)
    buffer = bytearray(64 << 20)
    with open(records.images_path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass
    return records


def read_rate(records: raw_records.RawRecords, batch: int, workers: int, sizes: Sizes) -> dict:
    """Images/s (and GB/s) the raw reader's training batches come at with
    `workers` threads, for `sizes.read_seconds`, after `sizes.warmup` batches."""
    batches = raw_records.train_batches(records, batch, seed=0, workers=workers)
    try:
        for _ in range(max(sizes.warmup, 1)):
            next(batches)
        done, start = 0, time.perf_counter()
        while done == 0 or time.perf_counter() - start < sizes.read_seconds:
            next(batches)
            done += 1
        elapsed = time.perf_counter() - start
    finally:
        batches.close()
    rate = done * batch / elapsed
    return {"images_per_s": rate, "gb_per_s": rate * records.row_bytes / 1e9}


def cache_gib(records: raw_records.RawRecords) -> float:
    return os.path.getsize(records.images_path) / 2**30
