"""The CPU this process runs on, read from /proc/cpuinfo: its model, logical
CPUs and the vector extensions that decide its GEMM rate. Every benchmark
table names it, so tables of different CPUs are never compared by mistake,
and measured choices (alexnet_jax.train.micro_batch) are kept per CPU."""

from __future__ import annotations

import os

CPUINFO = "/proc/cpuinfo"


def cpu_model_and_flags(cpuinfo: str = CPUINFO) -> tuple[str, set[str]]:
    """The first CPU's model name and flags in `cpuinfo` (unknown where it
    cannot be read: not Linux)."""
    model, flags = "unknown CPU", set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def usable_cpus() -> int:
    """The logical CPUs this process may run on (its affinity, where known)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# The vector extensions that decide a CPU's GEMM rate, as /proc/cpuinfo flags.
EXTENSIONS = {"AVX2": "avx2", "AVX-512F": "avx512f", "AVX-512 BF16": "avx512_bf16", "AMX": "amx_tile"}


def cpu_description(cpuinfo: str = CPUINFO) -> str:
    """The CPU by model, logical CPUs, and which of EXTENSIONS it has."""
    model, flags = cpu_model_and_flags(cpuinfo)
    has = [name for name, flag in EXTENSIONS.items() if flag in flags]
    lacks = [name for name, flag in EXTENSIONS.items() if flag not in flags]
    return f"{model}, {os.cpu_count()} CPUs, with {', '.join(has) or 'none of ' + '/'.join(EXTENSIONS)}" + (
        f"; without {', '.join(lacks)}" if lacks else ""
    )


def cpu_has_amx(cpuinfo: str = CPUINFO) -> bool:
    """Whether the CPU has AMX tiles (bfloat16 matrix units: the benchmark's
    bfloat16 rows run where it has)."""
    return EXTENSIONS["AMX"] in cpu_model_and_flags(cpuinfo)[1]
