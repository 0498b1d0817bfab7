"""The opt-in malloc settings (alexnet_jax/host_malloc.py): when they
apply, that a user's own choice is kept, and, in fresh processes, that
repeated CPU steps stop faulting in their buffers' memory while computing
the same numbers."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from alexnet_jax import host_malloc

# Runs a jitted step with a 64 MiB output (beyond glibc's largest mmap
# threshold) eight times and prints the fewest page faults of the last four
# calls (the heap may still grow in the first ones: XLA can free a buffer
# after the next call has taken its own), the pages of one output, and the
# result's checksum.
_STEPS = textwrap.dedent(
    """
    import json, resource
    import alexnet_jax
    import jax, jax.numpy as jnp

    x = jax.random.normal(jax.random.key(0), (4096, 4096))
    step = jax.jit(lambda x: jnp.tanh(x @ x[:256].T).repeat(16, axis=1) * 2.0)
    faults = []
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        out = jax.block_until_ready(step(x))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        checksum = float(out.sum())
        del out
    print(json.dumps({"faults": min(faults[4:]), "pages": 4096 * 4096 * 4 // 4096, "checksum": checksum}))
    """
)


def _steps_in_a_fresh_process(**env) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "ALEXNET_JAX_MALLOC"}
    environ.update(env, PYTHONPATH=os.getcwd(), JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", _STEPS], env=environ, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


class _FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, parameter, value):
        self.calls.append((parameter, value))
        return 1


@pytest.fixture
def on_cpu_glibc(monkeypatch):
    monkeypatch.setattr(host_malloc.sys, "platform", "linux")
    monkeypatch.setattr(host_malloc.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(host_malloc, "_accelerator_plugins_installed", lambda: False)
    monkeypatch.setattr(host_malloc.xla_cpu_flags, "backends_started", lambda: False)
    monkeypatch.setattr(host_malloc, "_threads", lambda: 1)


OPTED_IN = {"ALEXNET_JAX_MALLOC": "reuse"}


def test_settings_applied_on_a_cpu_glibc_machine_only_when_asked(on_cpu_glibc):
    libc = _FakeLibc()
    assert not host_malloc.apply({}, libc) and libc.calls == []
    assert host_malloc.apply(OPTED_IN, libc)
    assert libc.calls == [(-8, 1), (-4, 0), (-1, -1)]  # M_ARENA_MAX, M_MMAP_MAX, M_TRIM_THRESHOLD


@pytest.mark.parametrize(
    "environ",
    [
        {"MALLOC_ARENA_MAX": "4"},
        {"MALLOC_TRIM_THRESHOLD_": "0"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"},
        {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
        {"JAX_PLATFORMS": "cuda"},
    ],
)
def test_a_users_own_choice_or_an_accelerator_is_left_alone(on_cpu_glibc, environ):
    libc = _FakeLibc()
    assert not host_malloc.apply({**OPTED_IN, **environ}, libc)
    assert libc.calls == []


def test_accelerator_plugins_or_another_libc_are_left_alone(on_cpu_glibc, monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(host_malloc, "_accelerator_plugins_installed", lambda: True)
    assert host_malloc.apply({**OPTED_IN, "JAX_PLATFORMS": "cpu"}, libc)  # CPU forced: applies even with plugins
    assert not host_malloc.apply(OPTED_IN, libc)
    monkeypatch.setattr(host_malloc, "_accelerator_plugins_installed", lambda: False)
    monkeypatch.setattr(host_malloc.platform, "libc_ver", lambda: ("", ""))  # e.g. musl
    assert not host_malloc.apply(OPTED_IN, libc)
    assert len(libc.calls) == len(host_malloc.SETTINGS)  # only the forced-CPU call set anything


def test_too_late_leaves_malloc_and_warns(on_cpu_glibc, monkeypatch, caplog):
    monkeypatch.setattr(host_malloc.xla_cpu_flags, "backends_started", lambda: True)
    libc = _FakeLibc()
    assert not host_malloc.apply(OPTED_IN, libc)
    assert libc.calls == [] and "import alexnet_jax first" in caplog.text


def test_applied_after_other_threads_started_it_warns(on_cpu_glibc, monkeypatch, caplog):
    monkeypatch.setattr(host_malloc, "_threads", lambda: 2)
    libc = _FakeLibc()
    assert host_malloc.apply(OPTED_IN, libc)  # set anyway: threads started later still share the main arena
    assert "import alexnet_jax first" in caplog.text


@pytest.mark.skipif(sys.platform != "linux", reason="glibc and getrusage's page faults")
def test_steps_reuse_their_memory_and_compute_the_same():
    """With the settings a call, once the heap has grown, faults in (almost)
    none of its output's pages; with glibc's defaults every call faults them
    all in again. The numbers are the same."""
    ours = _steps_in_a_fresh_process(ALEXNET_JAX_MALLOC="reuse")
    glibc_default = _steps_in_a_fresh_process()
    assert ours["faults"] < 0.1 * ours["pages"], ours
    assert glibc_default["faults"] > 0.9 * glibc_default["pages"], glibc_default
    assert ours["checksum"] == glibc_default["checksum"]
