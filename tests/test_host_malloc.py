"""The opt-in malloc settings (alexnet_jax/platform/host_malloc.py): when they
apply, that a user's own choice is kept, and, in fresh processes, that
repeated CPU steps stop faulting in their buffers' memory while computing
the same numbers."""

import json
import os
import statistics
import subprocess
import sys
import textwrap

import pytest

from alexnet_jax.platform import host_malloc

# Runs a jitted step with a 64 MiB output (beyond glibc's largest mmap
# threshold) CALLS times and prints the page faults of each call after the
# first, the pages of one output, and the last result's checksum. With
# "reuse" the heap still grows now and then (a freed output split by small
# allocations no longer fits the next one: 0-6 of 23 calls faulted in a whole
# output in 15 runs on a 2-core AMD EPYC), so its test counts such calls
# instead of expecting none.
CALLS = 24
_STEPS = textwrap.dedent(
    f"""
    import json, resource
    from alexnet_jax.platform import machine_settings
    machine_settings.apply_machine_settings(absl_app=False)  # as the entry points do, before JAX starts
    import jax, jax.numpy as jnp

    pages = 4096 * 4096 * 4 // 4096
    x = jax.random.normal(jax.random.key(0), (4096, 4096))
    step = jax.jit(lambda x: jnp.tanh(x @ x[:256].T).repeat(16, axis=1) * 2.0)
    faults = []
    for call in range({CALLS}):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        out = jax.block_until_ready(step(x))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        if call < {CALLS} - 1:
            del out
    print(json.dumps({{"faults": faults[1:], "pages": pages, "checksum": float(out.sum())}}))
    """
)


def _steps_in_a_fresh_process(**env) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _STEPS],
        env=_clean_environ(**env),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _whole_outputs(steps: dict) -> int:
    """How many of the calls faulted in at least half of an output's pages."""
    return sum(faults > steps["pages"] / 2 for faults in steps["faults"])


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
    assert not host_malloc.applied  # a fake libc: this process's malloc is as it was


def test_the_log_line_says_what_malloc_runs_with_and_why(on_cpu_glibc):
    describe = host_malloc.describe
    assert describe(OPTED_IN, True, restarts=False).startswith("reuse (M_ARENA_MAX=1")
    assert describe({"GLIBC_TUNABLES": f"{RSEQ}:{HUGE}"}, False, restarts=True).startswith("huge pages")
    assert "environment's own" in describe({**OPTED_IN, "MALLOC_ARENA_MAX": "2"}, False, restarts=True)
    assert "accelerator" in describe({"JAX_PLATFORMS": "cuda"}, False, restarts=True)
    assert "ALEXNET_JAX_MALLOC=glibc" in describe({"ALEXNET_JAX_MALLOC": "glibc"}, False, restarts=True)
    assert "huge pages only for the commands that run training steps" in describe({}, False, restarts=False)
    assert "the kernel's transparent huge pages" in describe({}, False, restarts=True)


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
    assert libc.calls == [] and "apply them before JAX starts" in caplog.text


def test_applied_after_other_threads_started_it_warns(on_cpu_glibc, monkeypatch, caplog):
    monkeypatch.setattr(host_malloc, "_threads", lambda: 2)
    libc = _FakeLibc()
    assert host_malloc.apply(OPTED_IN, libc)  # set anyway: threads started later still share the main arena
    assert "apply them before importing it" in caplog.text


@pytest.mark.skipif(sys.platform != "linux", reason="glibc and getrusage's page faults")
def test_steps_reuse_their_memory_and_compute_the_same():
    """With the settings most calls, once the heap has grown, fault in almost
    none of their output's pages; with glibc's defaults every call faults
    them all in again. The numbers are the same."""
    ours = _steps_in_a_fresh_process(ALEXNET_JAX_MALLOC="reuse")
    glibc_default = _steps_in_a_fresh_process()
    assert _whole_outputs(ours) < (CALLS - 1) / 2, ours
    assert _whole_outputs(glibc_default) == CALLS - 1, glibc_default
    assert ours["checksum"] == glibc_default["checksum"]


def test_an_unknown_setting_is_a_one_line_error_naming_the_variable():
    assert host_malloc.mode({}) == host_malloc.mode({"ALEXNET_JAX_MALLOC": ""}) == "auto"
    with pytest.raises(ValueError, match=r"ALEXNET_JAX_MALLOC='jemalloc' is not one of auto, reuse, glibc: unset it"):
        host_malloc.mode({"ALEXNET_JAX_MALLOC": "jemalloc"})


ASKED_ONLY = "always [madvise] never\n"  # THP_ENABLED's words where huge pages go only to memory that asks
HUGE = host_malloc.HUGE_PAGES
RSEQ = "glibc.pthread.rseq=1"  # a user's tunable that is not malloc's


def test_huge_pages_wanted_only_where_the_kernel_waits_to_be_asked(on_cpu_glibc, monkeypatch):
    wanted = host_malloc.huge_pages_wanted
    assert wanted({}, ASKED_ONLY) and wanted({"ALEXNET_JAX_MALLOC": "auto"}, ASKED_ONLY)
    # Huge pages always (nothing to ask for), never, or a kernel without them.
    assert not any(wanted({}, policy) for policy in ("[always] madvise never", "always madvise [never]", ""))
    assert not wanted({"ALEXNET_JAX_MALLOC": "reuse"}, ASKED_ONLY)
    assert not wanted({"ALEXNET_JAX_MALLOC": "glibc"}, ASKED_ONLY)
    assert not wanted({"GLIBC_TUNABLES": HUGE}, ASKED_ONLY)  # the restarted process
    assert not wanted({"MALLOC_ARENA_MAX": "2"}, ASKED_ONLY) and not wanted({"JAX_PLATFORMS": "cuda"}, ASKED_ONLY)
    assert wanted({"GLIBC_TUNABLES": RSEQ}, ASKED_ONLY)  # not a malloc tunable
    monkeypatch.setattr(host_malloc.platform, "libc_ver", lambda: ("glibc", "2.34"))  # before the tunable
    assert not wanted({}, ASKED_ONLY)
    monkeypatch.setattr(host_malloc.platform, "libc_ver", lambda: ("", ""))  # e.g. musl
    assert not wanted({}, ASKED_ONLY)


def _clean_environ(**env) -> dict:
    """This environment without malloc choices, with `env` added; JAX on the CPU."""
    drop = ("MALLOC_", "ALEXNET_JAX_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**environ, **env, "PYTHONPATH": os.getcwd(), "JAX_PLATFORMS": "cpu"}


_RESTART = textwrap.dedent(
    """
    import os, sys
    from alexnet_jax.platform import host_malloc

    print("started with", os.environ.get("GLIBC_TUNABLES"), flush=True)
    host_malloc.restart_with_huge_pages(sys.argv[1])
    print("ran with", os.environ.get("GLIBC_TUNABLES"), flush=True)
    """
)


@pytest.mark.skipif(not host_malloc.glibc_knows_huge_pages(), reason="glibc 2.35 or later on Linux")
@pytest.mark.parametrize(
    "tunables, policy, lines",
    [
        (None, ASKED_ONLY, ["started with None", f"started with {HUGE}", f"ran with {HUGE}"]),
        (RSEQ, ASKED_ONLY, [f"started with {RSEQ}", f"started with {RSEQ}:{HUGE}", f"ran with {RSEQ}:{HUGE}"]),
        (None, "[always] madvise never", ["started with None", "ran with None"]),
    ],
)
def test_restart_reruns_the_command_once_with_the_tunable_added(tmp_path, tunables, policy, lines):
    """The command runs again from its start, same arguments, with glibc's
    tunable appended to the user's own; then it runs on, without restarting
    again. Where the kernel gives huge pages anyway, nothing restarts."""
    (tmp_path / "enabled").write_text(policy)
    environ = _clean_environ(**({"GLIBC_TUNABLES": tunables} if tunables else {}))
    result = subprocess.run(
        [sys.executable, "-c", _RESTART, str(tmp_path / "enabled")],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.splitlines() == lines


@pytest.mark.skipif(
    not host_malloc.huge_pages_wanted(_clean_environ(), host_malloc.thp_policy(host_malloc.THP_ENABLED)),
    reason="where the defaults restart with huge pages: a glibc with the tunable, a kernel that gives them where asked",
)
def test_huge_pages_fault_in_a_fraction_of_the_pages_and_compute_the_same():
    """With the tunable glibc's large chunks fault in 2 MiB at a time, so a
    call faults a small fraction of its output's 4 KiB pages; the numbers
    are the same."""
    huge = _steps_in_a_fresh_process(GLIBC_TUNABLES=host_malloc.HUGE_PAGES)
    glibc_default = _steps_in_a_fresh_process(ALEXNET_JAX_MALLOC="glibc")
    assert statistics.median(huge["faults"]) < 0.25 * huge["pages"], huge
    assert _whole_outputs(glibc_default) == CALLS - 1, glibc_default
    assert huge["checksum"] == glibc_default["checksum"]
