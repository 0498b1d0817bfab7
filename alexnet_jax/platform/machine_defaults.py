"""Defaults whose fastest value depends on the machine, resolved where they
are used so a user never needs to know them.

`config.micro_batch_size = -1` (the default) picks micro-batches on CPUs
only for batches beyond CPU_MICRO_BATCH_PIXELS per device. Where a CPU
batch leaves a choice of sizes, alexnet_jax.train.micro_batch measures it
once per machine instead, within the same budget; this rule serves the rest
(small inputs, several processes, accelerators). With XLA's own
convolution kernels (alexnet_jax.platform.xla_cpu_flags) the paper step at batch 128
ran fastest whole on a 2-core AMD EPYC (3.44 s, against 4.08 s in
micro-batches of 32, in one run with the reuse malloc settings of
alexnet_jax.platform.host_malloc; BENCHMARKS.md), while micro-batches keep the
activation memory of larger CPU batches bounded. Accelerators take the whole
batch. The update is the same either way (only dropout's random stream
differs; tests/test_sharding.py).
"""

from __future__ import annotations

import jax
import ml_collections

from alexnet_jax.parallel import sharding

AUTO = -1
# Micro-batch budget per data-parallel device, in input pixels: 128 of the
# paper's 224x224 crops, the largest batch measured (and the fastest) on CPU
# (BENCHMARKS.md).
CPU_MICRO_BATCH_PIXELS = 128 * 224 * 224


def batch_devices(config: ml_collections.ConfigDict) -> int:
    """Devices a batch's convolutions are spread over (as config_validation
    counts them): the data axis, times the model axis under "dense"."""
    data, model = sharding.mesh_shape(tuple(config.mesh), jax.device_count())
    return data * (model if config.model_parallel == "dense" else 1)


def micro_batch_size(config: ml_collections.ConfigDict, backend: str | None = None) -> int:
    """`config.micro_batch_size`, with AUTO resolved for `backend` (default:
    JAX's): on CPU the largest micro-batch within CPU_MICRO_BATCH_PIXELS per
    device that divides the batch evenly, if the batch exceeds the budget
    and such a size is at least half of it; 0 (the whole batch) otherwise."""
    if config.micro_batch_size != AUTO:
        return config.micro_batch_size
    if (backend or jax.default_backend()) != "cpu":
        return 0
    devices = batch_devices(config)
    per_device = config.batch_size // devices
    budget = max(1, CPU_MICRO_BATCH_PIXELS // config.model.input_size**2)
    if per_device <= budget:
        return 0
    size = max(d for d in range(1, budget + 1) if per_device % d == 0)
    # An odd batch (e.g. 37 per device) would split into tiny micro-batches.
    return size * devices if 2 * size >= budget else 0
