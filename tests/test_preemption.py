"""Runs stopped by SIGTERM mid-epoch save the step they stopped at and exit
with preemption.EXIT_STATUS; the restart ends where an uninterrupted run does.

The signal is sent once the run has logged a given step's training loss, with
the process paused (SIGSTOP) around it so it lands a step or two later at
most, whatever the machine's speed."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from alexnet_jax.parallel import sharding
from alexnet_jax.train import checkpointing, loop, preemption, steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 20  # a margin: tiny steps take ~30 ms and the test may be slow to react
# Several processes agree on the step through JAX's preemption sync point,
# which learns of the signal through the coordination service: about a
# second, i.e. tens of tiny steps (a 20-step run once finished first).
TWO_PROCESS_STEPS = 100
SIGNAL_AFTER = 2  # the step whose log line triggers the signal


def _overrides(config) -> list[str]:
    """Command-line overrides reproducing `config` (tiny_config and this file's changes)."""
    fields = [
        "data_dir",
        "model.width",
        "batch_size",
        "eval_batch_size",
        "num_train_steps",
        "log_every_steps",
        "eval_every_steps",
        "inspect_every_steps",
        "checkpoint_every_steps",
        "shuffle_buffer_size",
        "mesh",
        "model.conv_wgrad",
    ]
    return [f"--config.{field}={_field(config, field)}" for field in fields]


def _field(config, dotted: str):
    for name in dotted.split("."):
        config = config[name]
    return config


def _stoppable_config(tiny_config, total_steps: int = TOTAL_STEPS):
    config = tiny_config.copy_and_resolve_references()
    config.num_train_steps = total_steps
    config.log_every_steps = 1  # a line per step: the trigger
    config.eval_every_steps = 100
    config.checkpoint_every_steps = 1000  # no periodic save before the last step
    return config


def _run_and_signal(command: list[str], env: dict, target, timeout: float = 240) -> tuple[int, str]:
    """Runs `command` (in its own session), sends SIGTERM to `target(pid)`'s
    process once step SIGNAL_AFTER is logged; returns the status and the log."""
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    # The pipe read below blocks: past the time limit, the whole session goes.
    watchdog = threading.Timer(timeout, os.killpg, (process.pid, signal.SIGKILL))
    watchdog.start()
    lines, sent = [], False
    try:
        for line in process.stdout:
            lines.append(line)
            if not sent and f"] [{SIGNAL_AFTER}] " in line and "train_loss=" in line:
                pid = target(process.pid)
                os.kill(pid, signal.SIGSTOP)
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGCONT)
                sent = True
        returncode = process.wait(timeout=30)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    log = "".join(lines)
    assert sent, f"step {SIGNAL_AFTER} never logged:\n{log[-3000:]}"
    return returncode, log


def _saved_steps(workdir: str) -> list[int]:
    return sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")) if name.isdigit())


def _assert_identical(state_a, state_b) -> None:
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sigterm_saves_the_step_it_stopped_at_and_the_restart_matches(tiny_config, tmp_path, final_state):
    config = _stoppable_config(tiny_config)
    uninterrupted = str(tmp_path / "uninterrupted")
    loop.train_and_evaluate(config, uninterrupted)

    workdir = str(tmp_path / "stopped")
    command = [sys.executable, "-m", "alexnet_jax.main", "--config=configs/digits.py", f"--workdir={workdir}"]
    returncode, log = _run_and_signal(command + _overrides(config), dict(os.environ), target=lambda pid: pid)
    assert returncode == preemption.EXIT_STATUS, log[-3000:]
    assert "SIGTERM received" in log and "Traceback" not in log
    [stopped] = _saved_steps(workdir)  # the signal's save alone: no periodic one before the end
    assert SIGNAL_AFTER <= stopped < TOTAL_STEPS, log[-3000:]
    assert f"stopped by a signal after step {stopped}" in log
    with open(os.path.join(workdir, "config.json")) as f:  # what launch.report reads
        assert json.load(f)["last_exit"]["status"] == "stopped"

    loop.train_and_evaluate(config, workdir)  # resumes at `stopped`
    state_a, step_a = final_state(uninterrupted, config)
    state_b, step_b = final_state(workdir, config)
    assert step_a == step_b == TOTAL_STEPS
    _assert_identical(state_a, state_b)


def test_handlers_last_for_the_loop_a_second_sigint_is_left_to_kill_and_sigterms_repeat_harmlessly():
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    told = []
    stop = preemption.StopSignals(on_stop=told.append).install()
    try:
        assert not stop.requested(1)
        os.kill(os.getpid(), signal.SIGTERM)  # handled between bytecodes, before the next line
        os.kill(os.getpid(), signal.SIGTERM)  # a second one (scheduler and launcher both) changes nothing
        assert stop.requested(2) and told == ["SIGTERM"]  # told once, at the first signal
        os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL  # the next Ctrl-C kills at once
    finally:
        stop.restore()
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_a_second_sigint_ends_at_once_is_recorded_and_the_next_start_removes_temporary_folders(tiny_config, tmp_path):
    """The second Ctrl-C ends the process by SIGINT (status 130 in a shell)
    with config.json saying "interrupted"; the next start removes a save's
    leftover temporary folder and ends the run as finished."""
    config = _stoppable_config(tiny_config)
    workdir = str(tmp_path / "interrupted")
    command = [sys.executable, "-m", "alexnet_jax.main", "--config=configs/digits.py", f"--workdir={workdir}"]
    process = subprocess.Popen(
        command + _overrides(config),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    watchdog = threading.Timer(240, os.killpg, (process.pid, signal.SIGKILL))
    watchdog.start()
    lines, sent = [], 0
    try:
        for line in process.stdout:
            lines.append(line)
            first = sent == 0 and f"] [{SIGNAL_AFTER}] " in line and "train_loss=" in line
            if first or (sent == 1 and "SIGINT received: stopping" in line):  # the handler's note is written
                os.kill(process.pid, signal.SIGINT)
                sent += 1
        returncode = process.wait(timeout=30)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    log = "".join(lines)
    assert sent == 2 and returncode == -signal.SIGINT, log[-3000:]
    with open(os.path.join(workdir, "config.json")) as f:
        last_exit = json.load(f)["last_exit"]
    assert last_exit["status"] == "interrupted" and last_exit["step"] == 0, last_exit  # no checkpoint yet

    # What a second Ctrl-C mid-save leaves: orbax's temporary folder of that step.
    leftover = os.path.join(workdir, "checkpoints", "7.orbax-checkpoint-tmp-1700000000000000")
    os.makedirs(os.path.join(leftover, "state"))
    loop.train_and_evaluate(config, workdir)
    assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(TOTAL_STEPS)]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["last_exit"]["status"] == "finished"


def _process_with_id(launcher_pid: int, process_id: int) -> int:
    """The pid of launch/local.sh's child running --process_id=`process_id`."""
    with open(f"/proc/{launcher_pid}/task/{launcher_pid}/children") as f:
        children = [int(pid) for pid in f.read().split()]
    for pid in children:
        with open(f"/proc/{pid}/cmdline") as f:
            if f"--process_id={process_id}" in f.read().split("\0"):
                return pid
    raise AssertionError(f"no --process_id={process_id} among {children}")


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="finds local.sh's children in /proc")
def test_two_processes_stop_at_the_same_step_when_one_gets_sigterm(tiny_config, tmp_path, final_state):
    """Both processes save the same step, and the restart of both ends where an
    uninterrupted two-process run does (each launch takes ~20-35 s on 2 cores).
    One device per process with mesh (-1, 2): the two towers of one pair on
    two processes, so this is also the checkpoint-and-resume test of that
    layout (test_multiprocess resumes the two-devices-per-process layouts)."""
    config = _stoppable_config(tiny_config, TWO_PROCESS_STEPS)
    config.mesh = (-1, 2)
    env = {**os.environ, "NUM_PROCESSES": "2", "CPU_DEVICES": "1", "PYTHON": sys.executable}
    env["XLA_FLAGS"] = ""  # not the test process's 8 devices: 1 per process
    workdir, uninterrupted = str(tmp_path / "stopped"), str(tmp_path / "uninterrupted")
    command = ["launch/local.sh", "configs/digits.py", workdir, *_overrides(config)]
    ports = _free_ports(3)  # distinct: two launches run at once below
    returncode, log = _run_and_signal(command, {**env, "PORT": ports[0]}, target=lambda pid: _process_with_id(pid, 1))
    assert returncode == preemption.EXIT_STATUS, log[-3000:]
    [stopped] = _saved_steps(workdir)
    assert SIGNAL_AFTER <= stopped < TWO_PROCESS_STEPS, log[-3000:]
    assert log.count(f"stopped by a signal after step {stopped};") == 2, log[-3000:]  # one line per process

    template = steps.create_train_state(config, steps.create_model(config), 89, sharding.make_mesh((1, 1)))
    manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
    _, step, data = checkpointing.restore_latest_with_data(manager, template)
    manager.close()
    assert step == stopped and data["batch_in_epoch"] == stopped

    # The same command resumes both processes; the result is an uninterrupted
    # two-process run's. Those two launches run at once, after the stopped one:
    # by then its programs are in the session's compilation cache (conftest).
    launches = [
        (_start_launch(run_dir, config, {**env, "PORT": port}, tmp_path / f"{name}.log"), tmp_path / f"{name}.log")
        for run_dir, port, name in ((workdir, ports[1], "resumed"), (uninterrupted, ports[2], "uninterrupted"))
    ]
    try:
        for process, log_path in launches:
            _finish_launch(process, log_path)
    finally:
        for process, _ in launches:
            _kill_launch(process)
    state_a, step_a = final_state(uninterrupted, config)
    state_b, step_b = final_state(workdir, config)
    assert step_a == step_b == TWO_PROCESS_STEPS
    _assert_identical(state_a, state_b)


def _start_launch(run_dir: str, config, env: dict, log_path) -> subprocess.Popen:
    """launch/local.sh training `config` in `run_dir` (in its own session), its
    output to `log_path`: a file, so a launch left running fills no pipe."""
    command = ["launch/local.sh", "configs/digits.py", run_dir, *_overrides(config)]
    with open(log_path, "w") as log:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _finish_launch(process: subprocess.Popen, log_path, timeout: float = 240) -> None:
    """Waits (bounded) for a _start_launch, then asserts it exited with status 0."""
    try:
        process.wait(timeout=timeout)
    finally:
        _kill_launch(process)
    with open(log_path) as f:
        assert process.returncode == 0, f.read()[-3000:]


def _kill_launch(process: subprocess.Popen) -> None:
    """Ends a _start_launch's whole session if it is still running."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _free_ports(count: int) -> list[str]:
    """`count` distinct free ports (each socket held until all are chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [str(s.getsockname()[1]) for s in sockets]
