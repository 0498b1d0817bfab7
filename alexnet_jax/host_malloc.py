"""glibc malloc settings that let a CPU step reuse its buffers' memory,
opt-in: `ALEXNET_JAX_MALLOC=reuse` in the environment.

XLA:CPU takes each step's activations and gradients from malloc. glibc
serves an allocation beyond its mmap threshold (32 MiB at most) with a fresh
mmap, and so does every thread arena but the main one for anything larger
than its 64 MiB heaps, and unmaps it on free. So every step faults in, page
by page, and zeroes every large buffer again: about 514,000 page faults and
1 s of kernel time per paper step at batch 128 on a 2-core AMD EPYC.

With `ALEXNET_JAX_MALLOC=reuse`, `apply()` tells glibc, before JAX starts
its threads, to keep freed memory for reuse instead: one arena for all
threads (M_ARENA_MAX=1), no mmap for large chunks (M_MMAP_MAX=0) and no
returning of the heap's top to the system (M_TRIM_THRESHOLD=-1). Once the
heap has grown to the step's working set, steps reuse it without a fault. The cost: the process keeps its peak memory
until it exits instead of handing freed buffers back, and threads share one
arena's lock. Numbers are unaffected (tests/test_host_malloc.py).

Why opt-in (BENCHMARKS.md, 2-core AMD EPYC): the paper step at batch 128
ran 1.16x faster with it, but at twice the peak memory (6.1 GB against
3.2 GB), and the digits quick start, whose tf.data threads and small steps
contend for the one arena, took 42 s against 33 s.

The settings take full effect only if they come before any other thread
has called malloc: import alexnet_jax before jax (its entry points and
bench/ do), or it warns. It is applied only where it was measured to help:
on Linux with glibc, when JAX runs on the CPU (no accelerator plugin installed, or JAX_PLATFORMS
starting with "cpu"), and only if the user has not chosen their own malloc
settings (any MALLOC_* variable, glibc.malloc tunables in GLIBC_TUNABLES, or
another allocator in LD_PRELOAD, as PyTorch's CPU tuning guide suggests with
jemalloc or tcmalloc).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import logging
import os
import pkgutil
import platform
import sys

from alexnet_jax import xla_cpu_flags

# mallopt parameters (glibc's malloc.h) and the values set.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: never trim (mallopt(3))
_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc", "malloc")  # in LD_PRELOAD: the user's own allocator
OPT_IN = ("ALEXNET_JAX_MALLOC", "reuse")  # the environment variable and value that ask for SETTINGS


def user_chose_malloc(environ: dict) -> bool:
    """Whether the environment already sets how malloc behaves."""
    if any(name.startswith("MALLOC_") for name in environ):
        return True
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return True
    return any(name in environ.get("LD_PRELOAD", "") for name in _ALLOCATORS)


def _accelerator_plugins_installed() -> bool:
    """Whether JAX could find a GPU or TPU backend (a PJRT plugin or libtpu)."""
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    spec = importlib.util.find_spec("jax_plugins")
    if spec is not None and any(pkgutil.iter_modules(spec.submodule_search_locations or [])):
        return True
    return importlib.util.find_spec("libtpu") is not None


def jax_runs_on_cpu(environ: dict) -> bool:
    """Whether JAX's default backend will be the CPU, decided without starting it."""
    platforms = environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not _accelerator_plugins_installed()


def applicable(environ: dict) -> bool:
    """Whether `apply` changes malloc's settings in this process."""
    if environ.get(OPT_IN[0]) != OPT_IN[1]:
        return False
    on_glibc = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
    return on_glibc and not user_chose_malloc(environ) and jax_runs_on_cpu(environ)


def apply(environ: dict | None = None, libc=None) -> bool:
    """Sets SETTINGS where `applicable`; whether they are now in effect."""
    environ = os.environ if environ is None else environ
    if not applicable(environ):
        return False
    if xla_cpu_flags.backends_started():
        # XLA's threads already have their own arenas, whose large chunks glibc always maps afresh.
        logging.warning(
            "alexnet_jax: JAX's backends started before alexnet_jax was imported, so CPU steps keep "
            "faulting in their buffers' memory every step; import alexnet_jax first"
        )
        return False
    if _threads() > 1:
        # A thread that has called malloc has an arena of its own, which later
        # threads may share even with M_ARENA_MAX=1 (`import jax` starts one).
        logging.warning(
            "alexnet_jax: imported after another library (such as jax) started threads, so CPU steps may "
            "keep faulting in their buffers' memory every step; import alexnet_jax first"
        )
    return set_malloc(libc)


def _threads() -> int:
    """This process's threads, native ones included (Linux)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def set_malloc(libc=None) -> bool:
    """Sets SETTINGS unconditionally (glibc only); whether glibc took them all."""
    libc = ctypes.CDLL("libc.so.6") if libc is None else libc
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in SETTINGS)
