"""XLA:CPU options the project sets because they make its steps faster.

XLA:CPU hands convolutions, reductions and matrix products to YNNPACK by
default. On AlexNet's convolutions YNNPACK is the slower library: on a
2-core AMD EPYC (Zen 4), with the settings fastest under each, the paper's
train step ran 1.34x faster and the digits step 2.5x faster with XLA's own
(Eigen) kernels (BENCHMARKS.md, one run each). So the entry points, before
JAX starts its CPU backend, call `apply()` (alexnet_jax.platform.machine_settings;
importing the package changes nothing), which adds

    --xla_cpu_experimental_ynn_fusion_type=individual_dot

to XLA_FLAGS: YNNPACK for matrix products only. A user who sets that flag in
XLA_FLAGS keeps their own value. The numbers are the same up to float32
summation order (tests/test_xla_cpu_flags.py). The flag concerns XLA's CPU
compiler only; accelerators are unaffected. It is experimental, and XLA
refuses to start on a flag it does not know, so it is added only for the
jaxlib releases it was measured with (JAXLIB_RELEASES); others keep XLA's
defaults.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
VALUE = "individual_dot"
JAXLIB_RELEASES = ("0.10.",)  # version prefixes that know the flag and were measured with it


def _jaxlib_knows_the_flag() -> bool:
    try:
        return importlib.metadata.version("jaxlib").startswith(JAXLIB_RELEASES)
    except importlib.metadata.PackageNotFoundError:
        return False


def backends_started() -> bool:
    """Whether JAX has created its backends (after which XLA_FLAGS is read
    and changing it has no effect)."""
    if "jax" not in sys.modules:  # not imported, so not started (and importing it here would start threads)
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # JAX reorganised: nothing to protect
        return False
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started and started())


def apply(environ: dict | None = None) -> bool:
    """Adds the project's XLA:CPU flag to XLA_FLAGS unless the user set it;
    whether it is now in effect for this process."""
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if FLAG in flags:
        return f"{FLAG}={VALUE}" in flags.split()
    if not _jaxlib_knows_the_flag():
        return False
    if backends_started():
        logging.warning(
            "alexnet_jax: JAX's backends started before the XLA:CPU flag was applied, so XLA:CPU keeps YNNPACK "
            "convolutions (slower CPU steps); apply it before JAX starts, or set XLA_FLAGS=%s=%s",
            FLAG,
            VALUE,
        )
        return False
    environ["XLA_FLAGS"] = f"{flags} {FLAG}={VALUE}".strip()
    return True


def describe(flags_before: str, in_effect: bool) -> str:
    """What XLA:CPU runs with, and why, in a few words, given XLA_FLAGS
    before `apply` and its answer (for alexnet_jax.platform.machine_settings' log line)."""
    if in_effect:
        return f"{FLAG}={VALUE}" + (" (already in XLA_FLAGS)" if FLAG in flags_before else " (added to XLA_FLAGS)")
    if FLAG in flags_before:
        return "XLA_FLAGS' own " + next(flag for flag in flags_before.split() if flag.startswith(FLAG))
    if not _jaxlib_knows_the_flag():
        return f"XLA's defaults (this jaxlib was not measured with {FLAG})"
    return "XLA's defaults (JAX's backends had started: see the warning above)"
