"""glibc malloc settings that save a CPU step from faulting in its buffers'
memory page by page: transparent huge pages by default, buffer reuse opt-in.

XLA:CPU takes each step's activations and gradients from malloc. glibc
serves an allocation beyond its mmap threshold (32 MiB at most) with a fresh
mmap, and so does every thread arena but the main one for anything larger
than its 64 MiB heaps, and unmaps it on free. So every step faults in and
zeroes every large buffer again, 4 KiB at a time: about 514,000 page faults
and 1 s of kernel time per paper step at batch 128 on a 2-core AMD EPYC.

`ALEXNET_JAX_MALLOC` in the environment chooses what to do about it:

- "auto" (the default, or unset): huge pages. Where the kernel gives
  transparent huge pages only to memory that asks for them
  (/sys/kernel/mm/transparent_hugepage/enabled is "madvise"), the training
  command (`python -m alexnet_jax.main`; bench's train-step worker,
  profiler and conv_layers too) calls `restart_with_huge_pages()` at its
  start (alexnet_jax.platform.machine_settings), which
  re-executes the same command with
  glibc's tunable `glibc.malloc.hugetlb=1` (glibc 2.35 or later; tunables
  are read only when a process starts). glibc then asks for huge pages for
  its large chunks, which fault in 2 MiB at a time. The same memory, no
  other change: on a 2-core AMD EPYC the paper step at batch 128 ran 1.13x
  faster, at the same peak memory (BENCHMARKS.md). Where the kernel gives
  huge pages always, or never, there is nothing to ask for and nothing
  happens.
- "reuse": one arena for all threads (M_ARENA_MAX=1), no mmap for large
  chunks (M_MMAP_MAX=0) and no returning of the heap's top to the system
  (M_TRIM_THRESHOLD=-1), set by `apply()` when an entry point starts
  (alexnet_jax.platform.machine_settings), before JAX starts its threads. Once the heap has grown to the step's working
  set, steps reuse it, most without a fault (now and then small allocations
  split a freed buffer and the heap grows again, until it settles). The
  cost: the process keeps its peak memory (up to twice the default's), and
  threads share one arena's lock.
- "glibc": glibc's malloc as it comes.

All of it applies only where it was measured to help: on Linux with glibc,
when JAX runs on the CPU (no accelerator plugin installed, or JAX_PLATFORMS
starting with "cpu"), and only if the user has not chosen their own malloc
settings (any MALLOC_* variable, glibc.malloc tunables in GLIBC_TUNABLES, or
another allocator in LD_PRELOAD, as PyTorch's CPU tuning guide suggests with
jemalloc or tcmalloc). Numbers are unaffected (tests/test_host_malloc.py).
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

from alexnet_jax import errors
from alexnet_jax.platform import xla_cpu_flags

# mallopt parameters (glibc's malloc.h) and the values set.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: never trim (mallopt(3))
_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc", "malloc")  # in LD_PRELOAD: the user's own allocator
VARIABLE = "ALEXNET_JAX_MALLOC"
MODES = ("auto", "reuse", "glibc")  # the variable's values; unset means "auto"
HUGE_PAGES = "glibc.malloc.hugetlb=1"  # the glibc tunable "auto" adds to GLIBC_TUNABLES
HUGE_PAGES_GLIBC = (2, 35)  # the first glibc release that knows it
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"  # the kernel's huge-page policy
applied = False  # whether this process has set SETTINGS (set_malloc on glibc's own mallopt)


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


def mode(environ: dict) -> str:
    """`ALEXNET_JAX_MALLOC`'s value; ValueError naming it if it is not one of MODES."""
    value = environ.get(VARIABLE, "") or "auto"
    if value not in MODES:
        raise errors.ConfigError(
            f"{VARIABLE}={value!r} is not one of {', '.join(MODES)}: unset it (meaning auto) or pick one"
        )
    return value


def glibc_version() -> tuple[int, ...] | None:
    """This process's glibc release, or None off Linux/glibc (musl, macOS)."""
    name, version = platform.libc_ver()
    if sys.platform != "linux" or name != "glibc":
        return None
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def glibc_knows_huge_pages() -> bool:
    """Whether this process's glibc knows the HUGE_PAGES tunable."""
    glibc = glibc_version()
    return glibc is not None and glibc >= HUGE_PAGES_GLIBC


def _ours_to_set(environ: dict) -> bool:
    """Whether malloc is this project's to set: JAX on the CPU, and no choice of the user's."""
    return not user_chose_malloc(environ) and jax_runs_on_cpu(environ)


def applicable(environ: dict) -> bool:
    """Whether `apply` changes malloc's settings in this process ("reuse")."""
    return mode(environ) == "reuse" and glibc_version() is not None and _ours_to_set(environ)


def huge_pages_wanted(environ: dict, policy: str) -> bool:
    """Whether `restart_with_huge_pages` restarts: "auto", a glibc that knows
    the tunable, and a kernel policy (THP_ENABLED's text, such as
    "always [madvise] never") that gives huge pages only where asked."""
    asked_only = "[madvise]" in policy
    return mode(environ) == "auto" and glibc_knows_huge_pages() and asked_only and _ours_to_set(environ)


def thp_policy(path: str) -> str:
    """The kernel's transparent huge page policy as THP_ENABLED words it ("" where there is none)."""
    try:
        with open(path) as policy:
            return policy.read()
    except OSError:  # no transparent huge pages in this kernel
        return ""


def restart_with_huge_pages(thp_enabled: str = THP_ENABLED) -> None:
    """Re-executes this command (same interpreter, options and arguments)
    with glibc asked for transparent huge pages, where `huge_pages_wanted`;
    otherwise returns. Call it first thing in an entry point, before any
    work: the process is replaced. The restarted process finds the tunable
    in GLIBC_TUNABLES, a choice it keeps, so it does not restart again."""
    if not huge_pages_wanted(os.environ, thp_policy(thp_enabled)):
        return
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    environ = {**os.environ, "GLIBC_TUNABLES": f"{tunables}:{HUGE_PAGES}" if tunables else HUGE_PAGES}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, environ)
    except OSError as error:  # e.g. the interpreter moved: run on without huge pages
        logging.warning("alexnet_jax: could not restart with huge pages (%s); running without them", error)


def apply(environ: dict | None = None, libc=None) -> bool:
    """Sets SETTINGS where `applicable`; whether they are now in effect."""
    environ = os.environ if environ is None else environ
    if not applicable(environ):
        return False
    if xla_cpu_flags.backends_started():
        # XLA's threads already have their own arenas, whose large chunks glibc always maps afresh.
        logging.warning(
            "alexnet_jax: JAX's backends started before the malloc settings, so CPU steps keep "
            "faulting in their buffers' memory every step; apply them before JAX starts"
        )
        return False
    if _threads() > 1:
        # A thread that has called malloc has an arena of its own, which later
        # threads may share even with M_ARENA_MAX=1 (`import jax` starts one).
        logging.warning(
            "alexnet_jax: malloc settings applied after another library (such as jax) started threads, so CPU "
            "steps may keep faulting in their buffers' memory every step; apply them before importing it"
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
    global applied
    if libc is None:
        libc, applied = ctypes.CDLL("libc.so.6"), True
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in SETTINGS)


def describe(environ: dict, applied_now: bool, restarts: bool) -> str:
    """What malloc runs with in this process, and why, in a few words (for
    the log line of alexnet_jax.platform.machine_settings). `applied_now`: `apply`'s
    answer; `restarts`: whether this entry point restarts for huge pages."""
    if HUGE_PAGES in environ.get("GLIBC_TUNABLES", "").split(":"):
        return f"huge pages ({HUGE_PAGES} in GLIBC_TUNABLES)"
    if user_chose_malloc(environ):
        return "the environment's own (MALLOC_*, GLIBC_TUNABLES or LD_PRELOAD)"
    if not jax_runs_on_cpu(environ):
        return "glibc's as it comes (JAX runs on an accelerator)"
    if glibc_version() is None:
        return "the system's (not glibc)"
    chosen = mode(environ)
    if chosen == "reuse":
        if applied_now:
            return "reuse (M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1)"
        return "glibc's as it comes (reuse could not be set: see the warning above)"
    if chosen == "glibc":
        return f"glibc's as it comes ({VARIABLE}=glibc)"
    if not restarts:
        return "glibc's as it comes (huge pages only for the commands that run training steps)"
    if not glibc_knows_huge_pages():
        return f"glibc's as it comes (glibc before {'.'.join(map(str, HUGE_PAGES_GLIBC))} has no huge-page tunable)"
    policy = thp_policy(THP_ENABLED).strip() or "none in this kernel"
    return f"glibc's as it comes (the kernel's transparent huge pages: {policy})"
