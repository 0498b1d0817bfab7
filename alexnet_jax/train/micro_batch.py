"""`config.micro_batch_size = -1` on a CPU: the size measured once per
machine and model, then read from a file next to the compilation cache.

Which micro-batch runs a large CPU step fastest depends on the CPU, not only
on the batch: on a 2-core AMD EPYC (Zen 4) the paper step at batch 128 runs
whole and in halves alike and 13-23% slower in quarters (BENCHMARKS.md),
while a 2-core Intel Xeon with AMX ran it 1.13x faster in micro-batches of
32, with the kernels of that time (issue 17). So where the per-device batch
leaves a choice (`candidates`: paper-sized batches; small inputs such as the
digits config leave none), the first run of a model on a machine times its
real train step at each candidate, in alternating rounds, and keeps the
fastest (the largest within TIE_FRACTION of it); later runs read the choice
from CHOICES_FILE. The mean gradient is the same at every size
(tests/test_sharding.py); only dropout's random stream differs, so the
choice is logged.

Runs of several processes, and backends other than the CPU, keep
machine_defaults' rule: every process must compile the same step, and
accelerators take the whole batch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from alexnet_jax.data import augment, synthetic
from alexnet_jax.files import paths
from alexnet_jax.parallel import sharding
from alexnet_jax.platform import cpu_info, machine_defaults
from alexnet_jax.train import steps

# The smallest micro-batch tried, in input pixels per device: 32 of the
# paper's 224x224 crops, the smallest size either CPU measured so far
# preferred (issue 17). Batches with less than two sizes have no choice.
MIN_MICRO_PIXELS = 32 * 224 * 224
CHOICES_FILE = "micro_batch_choices.json"  # next to config.compilation_cache_dir
# Untimed steps per candidate (the first compiles), then rounds that time
# each candidate in turn, so a slow spell of a shared machine hits them alike.
WARMUP_STEPS, ROUNDS, STEPS_PER_ROUND = 1, 2, 2
# A smaller size must beat the larger ones by more than this fraction: the
# paper step whole and in halves differed by under 2% on the AMD EPYC,
# within the machine's noise, and larger micro-batches keep the choice
# steady (and dropout's stream that of the whole batch) where sizes tie.
TIE_FRACTION = 0.02

StepFn = Callable[..., Any]


def candidates(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The `micro_batch_size` values worth timing (0 = the whole batch): the
    whole per-device batch if within machine_defaults' memory budget, then
    its halves, down to MIN_MICRO_PIXELS."""
    devices = machine_defaults.batch_devices(config)
    per_device = config.batch_size // devices
    pixels = config.model.input_size**2
    sizes, size = [], per_device
    while size * pixels >= MIN_MICRO_PIXELS:
        if size * pixels <= machine_defaults.CPU_MICRO_BATCH_PIXELS:
            sizes.append(0 if size == per_device else size * devices)
        if size % 2:
            break
        size //= 2
    return tuple(sizes)


def should_measure(config: ml_collections.ConfigDict) -> bool:
    """Whether this run's micro-batch size is measured (or read from a
    measurement) rather than machine_defaults' rule."""
    return (
        config.micro_batch_size == machine_defaults.AUTO
        and jax.default_backend() == "cpu"
        and jax.process_count() == 1
        and len(candidates(config)) > 1
    )


def choices_file(config: ml_collections.ConfigDict) -> epath.Path | None:
    """Where measured choices are kept: beside the compilation cache (none
    when that is off, "": then every run measures)."""
    if not config.compilation_cache_dir:
        return None
    return epath.Path(os.path.expanduser(config.compilation_cache_dir)).parent / CHOICES_FILE


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _malloc_settings() -> dict[str, str]:
    """The environment that decides how malloc behaves (alexnet_jax.platform.host_malloc)."""
    names = ("ALEXNET_JAX_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD")
    return {k: v for k, v in sorted(os.environ.items()) if k in names or k.startswith("MALLOC_")}


def measurement_key(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What a step's speed depends on: the machine, the software, the
    process's kernel and malloc settings, and the step's shapes."""
    model, flags = cpu_info.cpu_model_and_flags()
    return {
        "cpu": model,
        "cpu_extensions": sorted(name for name, flag in cpu_info.EXTENSIONS.items() if flag in flags),
        "cpus": cpu_info.usable_cpus(),
        "devices": jax.device_count(),
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "malloc": _malloc_settings(),
        "mesh": list(config.mesh),
        "model_parallel": config.model_parallel,
        "batch_size": config.batch_size,
        "resize_size": config.resize_size,  # the stored images the step crops
        "model": config.model.to_dict(),
    }


def _key_id(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def read_choice(path: epath.Path | None, key: dict[str, Any]) -> int | None:
    """The choice measured for `key`, if `path` holds one (an unreadable
    file is reported and measured over)."""
    if path is None or not path.exists():
        return None
    try:
        entry = json.loads(path.read_text()).get(_key_id(key))
        return None if entry is None else int(entry["micro_batch_size"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        logging.warning("%s is unreadable (%s): measuring the micro-batch size again", path, error)
        return None


def write_choice(path: epath.Path | None, key: dict[str, Any], choice: int, step_seconds: dict[int, float]) -> None:
    """Adds a measured choice to `path` (rewritten atomically); failing to
    write only costs a measurement next time."""
    if path is None:
        return
    try:
        entries = json.loads(path.read_text()) if path.exists() else {}
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError):
        entries = {}
    entries[_key_id(key)] = {
        "micro_batch_size": choice,
        "step_seconds": {str(m): round(s, 4) for m, s in step_seconds.items()},
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        "key": key,
    }
    try:
        paths.write_json(path, entries)
    except OSError as error:
        logging.warning("could not write %s (%s): the micro-batch size will be measured again", path, error)


@jax.jit
def _copy(tree: Any) -> Any:
    return jax.tree.map(jnp.copy, tree)


def time_candidates(build_step: Callable[[int], StepFn], sizes: tuple[int, ...], state: Any, batch: Any, key: Any):
    """(median seconds per step of each size, the built steps): `build_step(m)`
    is the train step at micro-batch size `m`, which donates the state it is
    given, so each round runs on a copy and `state` is left as it was."""
    fns = {m: build_step(m) for m in sizes}
    times: dict[int, list[float]] = {m: [] for m in sizes}
    for round_index in range(ROUNDS):
        for m in sizes:
            current = _copy(state)
            for step in range((WARMUP_STEPS if round_index == 0 else 0) + STEPS_PER_ROUND):
                start = time.perf_counter()
                current, step_metrics = fns[m](current, batch, key)
                jax.block_until_ready(step_metrics)
                if round_index or step >= WARMUP_STEPS:
                    times[m].append(time.perf_counter() - start)
            del current
    return {m: statistics.median(t) for m, t in times.items()}, fns


def choose(step_seconds: dict[int, float]) -> int:
    """The first size (whole batch first, then smaller) within TIE_FRACTION
    of the fastest."""
    best = min(step_seconds.values())
    return next(m for m, s in step_seconds.items() if s <= best * (1 + TIE_FRACTION))


def resolve(
    config: ml_collections.ConfigDict,
    build_step: Callable[[int], StepFn],
    state: Any,
    make_batch: Callable[[], Any],
    key: Any,
) -> tuple[int, StepFn]:
    """(micro-batch size, train step) for this run: `config.micro_batch_size`
    unless it is -1; then, where `should_measure`, the choice recorded for
    this machine and model or, lacking one, the fastest candidate timed now
    on `make_batch()` (and recorded); machine_defaults' rule elsewhere."""
    if not should_measure(config):
        micro = machine_defaults.micro_batch_size(config)
        if config.micro_batch_size == machine_defaults.AUTO:
            logging.info("micro_batch_size=-1 on %s: %s", jax.default_backend(), micro or "the whole batch at once")
        return micro, build_step(micro)
    path, sizes = choices_file(config), candidates(config)
    key_fields = measurement_key(config)
    micro = read_choice(path, key_fields)
    if micro is not None and micro not in sizes:  # e.g. a record edited by hand
        logging.warning("%s holds micro_batch_size=%d, not one of %s: measuring again", path, micro, sizes)
        micro = None
    if micro is not None:
        logging.info("micro_batch_size=-1: %s, as measured before on this machine (%s)", micro or "whole", path)
        return micro, build_step(micro)
    logging.info("micro_batch_size=-1: timing the train step at micro-batch sizes %s (0 = whole batch)", sizes)
    step_seconds, fns = time_candidates(build_step, sizes, state, make_batch(), key)
    micro = choose(step_seconds)
    logging.info(
        "micro_batch_size=-1: %s (median seconds per step: %s); recorded in %s",
        micro or "whole",
        ", ".join(f"{m or 'whole'}: {s:.3f}" for m, s in step_seconds.items()),
        path or "nowhere (compilation_cache_dir is off)",
    )
    write_choice(path, key_fields, micro, step_seconds)
    return micro, fns[micro]


def with_micro_batch_size(config: ml_collections.ConfigDict, micro: int) -> ml_collections.ConfigDict:
    """A copy of `config` whose steps compute in micro-batches of `micro` (0: whole)."""
    resolved = config.copy_and_resolve_references()
    resolved.micro_batch_size = micro
    return resolved


def make_train_fn(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    state: steps.TrainState,
    stats: augment.DataStats,
    noise_end: int | None,
    key: jax.Array,
) -> tuple[int, StepFn]:
    """(micro-batch size, `steps.make_train_fn`'s step at that size) for a
    run; a measurement times random batches of the run's shape."""

    def build_step(micro: int) -> StepFn:
        return steps.make_train_fn(with_micro_batch_size(config, micro), mesh, state, stats, noise_end)

    def make_batch() -> Any:
        return sharding.global_batch(next(synthetic.train_batches(config)), mesh)

    return resolve(config, build_step, state, make_batch, key)
