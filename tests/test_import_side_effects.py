"""Importing the project changes nothing in the process: every module of
alexnet_jax, configs, launch and bench leaves os.environ, malloc and XLA's
flags as they were, whatever ALEXNET_JAX_MALLOC says. The entry points apply
the machine settings (alexnet_jax/platform/machine_settings.py), say so in one log
line, and stop on a bad ALEXNET_JAX_MALLOC in one line with exit status 2."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"

# Imports the libraries the project uses first (TensorFlow sets several
# variables of its own when imported), then every project module (with
# argument "all"; else the package and its settings modules only), and prints
# what changed in os.environ and whether malloc's settings were set.
_IMPORT_EVERYTHING = textwrap.dedent(
    """
    import importlib, json, os, pkgutil, sys
    print("started", flush=True)  # once: nothing restarted the process
    every = sys.argv[1] == "all"
    for library in ("jax", "jax.numpy", "tensorflow", "tensorflow_datasets", "flax.linen", "optax",
                    "orbax.checkpoint", "clu.metric_writers", "clu.periodic_actions", "ml_collections",
                    "absl.app", "numpy", "PIL.Image", "matplotlib.pyplot") if every else ():
        importlib.import_module(library)
    before = dict(os.environ)
    ours = ("alexnet_jax", "configs", "launch", "bench") if every else ("alexnet_jax",)
    imported, skipped = [], []
    for package in map(importlib.import_module, ours):
        imported.append(package.__name__)
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + ".") if every else ():
            try:
                importlib.import_module(module.name)
            except ModuleNotFoundError as error:
                if error.name.split(".")[0] in ours:
                    raise
                skipped.append(module.name)  # an optional library (torch, for bench.torch_alexnet)
                continue
            imported.append(module.name)
    from alexnet_jax.platform import host_malloc  # noqa: F401
    from alexnet_jax.platform import xla_cpu_flags
    changed = {k: [before.get(k), os.environ.get(k)] for k in {*before, *os.environ}}
    changed = {k: values for k, values in changed.items() if values[0] != values[1]}
    print(json.dumps({"imported": imported, "skipped": skipped, "changed": changed,
                      "malloc_set": getattr(host_malloc, "applied", None)}))
    """
)


def _environ(**env) -> dict:
    """This environment without malloc choices or XLA flags, with `env` added; JAX on the CPU."""
    drop = ("MALLOC_", "ALEXNET_JAX_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD", "XLA_FLAGS")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", **env}


def _import_in_a_fresh_process(what: str, **env) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERYTHING, what],
        cwd=REPO,
        env=_environ(**env),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    started, report = result.stdout.strip().splitlines()[-2:]
    assert started == "started" and result.stdout.count("started") == 1
    return json.loads(report)


def test_importing_every_module_changes_nothing():
    """With a bad ALEXNET_JAX_MALLOC any settings code reached at import
    would raise (huge pages and reuse both read it first): one walk through
    every module stands for the other values too (tested below on the package)."""
    report = _import_in_a_fresh_process("all", ALEXNET_JAX_MALLOC="typo")
    assert {"alexnet_jax.main", "alexnet_jax.evaluate", "configs.sweeps.seeds", "launch.sweep"} <= set(
        report["imported"]
    )
    assert {"bench.train_step", "bench.communication", "bench.input_pipeline"} <= set(report["imported"])
    assert set(report["skipped"]) <= {"bench.torch_alexnet"}
    assert report["changed"] == {} and report["malloc_set"] is False


@pytest.mark.parametrize("malloc", [None, "reuse"])
def test_importing_the_package_changes_nothing(malloc):
    report = _import_in_a_fresh_process("package", **({"ALEXNET_JAX_MALLOC": malloc} if malloc else {}))
    assert report["changed"] == {} and report["malloc_set"] is False


def test_a_bad_malloc_setting_stops_an_entry_point_in_one_line(tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "alexnet_jax.main", "--config", "configs/digits.py", f"--workdir={workdir}"],
        cwd=REPO,
        env=_environ(ALEXNET_JAX_MALLOC="typo"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: ALEXNET_JAX_MALLOC='typo' is not one of auto, reuse, glibc: unset it (meaning auto) or pick one"
    ]
    assert not workdir.exists()


# An absl app as the entry points are: the settings applied, then app.run.
_ENTRY_POINT = textwrap.dedent(
    """
    import atexit, gc, json, os
    from absl import app
    from alexnet_jax.platform import host_malloc, machine_settings

    # Registered first, so it runs last: after the handler the settings add.
    atexit.register(lambda: print(json.dumps({"frozen_at_exit": gc.get_freeze_count() > 0}), flush=True))
    machine_settings.apply_machine_settings()
    frozen = gc.get_freeze_count() > 0
    app.run(lambda argv: print(json.dumps(
        {"xla_flags": os.environ["XLA_FLAGS"], "malloc_set": host_malloc.applied, "frozen": frozen}
    )))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_entry_point_applies_the_settings_and_logs_one_line_naming_them():
    env = _environ(ALEXNET_JAX_MALLOC="reuse", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    result = subprocess.run(
        [sys.executable, "-c", _ENTRY_POINT], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    applied, at_exit = [json.loads(line) for line in result.stdout.strip().splitlines()[-2:]]
    want = {"xla_flags": f"--xla_force_host_platform_device_count=2 {FLAG}", "malloc_set": True, "frozen": False}
    assert applied == want
    # At exit the objects left are frozen (no final collection), and handlers registered before still run.
    assert at_exit == {"frozen_at_exit": True}
    [line] = [line for line in result.stderr.splitlines() if "machine settings:" in line]
    assert line.startswith("I")  # absl's INFO line
    assert line.endswith(
        f"machine settings: XLA:CPU with {FLAG} (added to XLA_FLAGS); "
        "malloc: reuse (M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1); exit: no final garbage collection"
    )


def test_a_launcher_only_checks_and_says_so(capsys):
    """launch.sweep runs no JAX: it changes nothing, each variant applies its own."""
    from alexnet_jax.platform import machine_settings

    before = dict(os.environ)
    line = machine_settings.apply_machine_settings(absl_app=False, runs_jax=False)
    assert dict(os.environ) == before
    assert capsys.readouterr().err.strip() == line and "none in this process (it runs no JAX)" in line
