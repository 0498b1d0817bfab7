"""Two processes on loopback (jax.distributed, gloo CPU collectives), launched
by launch/local.sh: train, checkpoint, restart both, resume, and compare with
one process that sees the same global batches; the paper's two towers on two
processes of one device each, from an empty data directory."""

import concurrent.futures
import os
import re
import socket
import subprocess
import sys
from unittest import mock

import jax
import numpy as np

from alexnet_jax.data import pipeline
from alexnet_jax.parallel import sharding
from alexnet_jax.train import loop

# The unpatched reader: the single-process run below replaces
# pipeline.train_batches with a two-process emulation that calls this.
_TRAIN_BATCHES = pipeline.train_batches
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(data_dir: str, steps: int, mesh: str, inspect: bool) -> list[str]:
    return [
        # The digits config's inspection (the first and last steps) or none.
        *([] if inspect else ["--config.inspect_every_steps=0"]),
        f"--config.data_dir={data_dir}",
        "--config.model.width=0.125",
        "--config.batch_size=16",
        "--config.eval_batch_size=64",
        f"--config.num_train_steps={steps}",
        "--config.log_every_steps=1",
        "--config.eval_every_steps=100",
        "--config.checkpoint_every_steps=2",
        "--config.shuffle_buffer_size=64",
        f"--config.mesh={mesh}",
        "--config.model.conv_wgrad=xla",  # as tiny_config: compiles faster
    ]


def _launch_two_processes(
    workdir: str, data_dir: str, steps: int, devices_each: int, mesh: str = "(-1, 2)", inspect: bool = False
) -> str:
    env = {**os.environ, "NUM_PROCESSES": "2", "CPU_DEVICES": str(devices_each), "PYTHON": sys.executable}
    env.update(PORT=str(_free_port()), XLA_FLAGS="")  # not the test process's 8 devices
    result = subprocess.run(
        ["launch/local.sh", "configs/digits.py", workdir, *_overrides(data_dir, steps, mesh, inspect)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def _assert_processes_agree(log: str, steps: range) -> None:
    """Both processes log the same loss at every step (they compute one global
    batch's loss), and each evaluation counts the 360 test digits once."""
    losses = re.findall(r"\[(\d+)\] .*train_loss=([\d.]+)", log)
    assert sorted(int(step) for step, _ in losses) == [s for s in steps for _ in range(2)], log[-3000:]
    for step in steps:
        first, second = [loss for s, loss in losses if int(s) == step]
        assert first == second, f"the processes disagree at step {step}: {first} != {second}"
    assert re.findall(r"eval_num_examples=(\d+)", log) == ["360", "360"], log[-3000:]


def _two_process_global_batches(config, builder, position=None):
    """What the two processes feed together: process 0's local batch, then
    process 1's (its devices hold the second half of the 'data' axis)."""
    streams = []
    for index in range(2):
        part = sharding.DataPart(index, 2)
        with mock.patch.object(pipeline.multihost, "config_data_part", return_value=part):
            streams.append(_TRAIN_BATCHES(config, builder, position or pipeline.StreamPosition()))
    for local_batches in zip(*streams):
        yield {k: np.concatenate([b[k] for b in local_batches]) for k in local_batches[0]}


def test_two_processes_checkpoint_resume_and_match_one_process(tiny_config, digits_data_dir, tmp_path, final_state):
    """Two processes of two devices: steps 1-2 with the towers on each
    process's two devices (mesh (-1, 2): one data slice per process), then a
    restart of both with pure data parallelism (mesh (-1, 1): two data slices
    per process) that resumes at step 2. Under both layouts the processes log
    the same losses and count 360 test examples, and the result is one
    process's over the same global batches."""
    workdir = str(tmp_path / "two")

    def two_process_runs() -> tuple[str, str]:
        first = _launch_two_processes(workdir, digits_data_dir, steps=2, devices_each=2, mesh="(-1, 2)")
        return first, _launch_two_processes(workdir, digits_data_dir, steps=4, devices_each=2, mesh="(-1, 1)")

    config = tiny_config.copy_and_resolve_references()
    config.num_train_steps = 4
    config.eval_every_steps = 100
    config.checkpoint_every_steps = 2
    config.mesh = (2, 2)
    single = str(tmp_path / "one")
    # The launches (a thread waiting on subprocesses) and the single process
    # share nothing: the latter trains meanwhile, in this process.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        launches = pool.submit(two_process_runs)
        with mock.patch.object(pipeline, "train_batches", _two_process_global_batches):
            loop.train_and_evaluate(config, single)
        first, second = launches.result()

    assert "JAX process 1 of 2" in first and "4 global cpu devices" in first
    _assert_processes_agree(first, range(1, 3))
    assert "Resumed from the checkpoint of step 2" in second
    _assert_processes_agree(second, range(3, 5))
    # Only process 0 writes summaries: one event file per launch.
    assert len([f for f in os.listdir(workdir) if f.startswith("events.out.tfevents")]) == 2

    state_two, step_two = final_state(workdir, config)
    state_one, step_one = final_state(single, config)
    assert step_two == step_one == 4
    for a, b in zip(jax.tree.leaves(state_two), jax.tree.leaves(state_one)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_two_processes_of_one_device_hold_one_model_pair(tiny_config, tmp_path, final_state):
    """mesh (-1, 2) over two processes of one device: the two towers of one
    pair, so one data part. Both read the same examples (the same loss at
    every step), evaluation counts the 360 test digits once, and training
    matches one process driving both devices. The data directory starts
    empty: process 0 prepares the dataset, caches and statistics while the
    other waits (every process preparing at once crashed tfds)."""
    workdir, data_dir, num_steps = str(tmp_path / "pair"), str(tmp_path / "empty_tfds"), 4
    log = _launch_two_processes(workdir, data_dir, steps=num_steps, devices_each=1, inspect=True)
    assert "JAX process 1 of 2" in log and "2 global cpu devices" in log
    # The inspection (replicated onto both processes; process 0 writes it) at the first and last steps.
    assert re.findall(r"\[(\d+)\] Got images: ", log) == ["1", f"{num_steps}"], log[-3000:]
    assert "Waiting for another process to prepare dataset sklearn_digits" in log
    _assert_processes_agree(log, range(1, num_steps + 1))

    config = tiny_config.copy_and_resolve_references()
    config.data_dir = data_dir  # as prepared by the two processes
    config.num_train_steps = num_steps
    config.eval_every_steps = 100
    config.mesh = (1, 2)  # the same two towers, on two of this process's devices
    summary = loop.train_and_evaluate(config, str(tmp_path / "one"))
    assert summary["eval_num_examples"] == 360
    eval_losses = [float(x) for x in re.findall(r"eval_loss=([\d.]+)", log)]
    np.testing.assert_allclose(eval_losses, [summary["eval_loss"]] * 2, rtol=1e-5)
    state_two, step_two = final_state(workdir, config)
    state_one, step_one = final_state(str(tmp_path / "one"), config)
    assert step_two == step_one == num_steps
    for a, b in zip(jax.tree.leaves(state_two), jax.tree.leaves(state_one)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
