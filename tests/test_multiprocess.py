"""Two processes on loopback (jax.distributed, gloo CPU collectives), launched
by launch/local.sh: train, checkpoint, restart both, resume, and compare with
one process that sees the same global batches."""

import os
import socket
import subprocess
import sys
from unittest import mock

import jax
import numpy as np

from alexnet_jax import input_pipeline, sharding, steps, train

# The unpatched reader: the single-process run below replaces
# input_pipeline.train_batches with a two-process emulation that calls this.
_TRAIN_BATCHES = input_pipeline.train_batches
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(data_dir: str, steps: int) -> list[str]:
    return [
        f"--config.data_dir={data_dir}",
        "--config.model.width=0.125",
        "--config.batch_size=16",
        "--config.eval_batch_size=64",
        f"--config.num_train_steps={steps}",
        "--config.log_every_steps=1",
        "--config.eval_every_steps=100",
        "--config.checkpoint_every_steps=2",
        "--config.shuffle_buffer_size=64",
        "--config.mesh=(-1, 2)",
        "--config.model.conv_wgrad=xla",  # as tiny_config: compiles faster
    ]


def _launch_two_processes(workdir: str, data_dir: str, steps: int) -> str:
    env = {**os.environ, "NUM_PROCESSES": "2", "CPU_DEVICES": "2", "PORT": str(_free_port()), "PYTHON": sys.executable}
    env["XLA_FLAGS"] = ""  # not the test process's 8 devices: 2 per process, 4 in all
    result = subprocess.run(
        ["launch/local.sh", "configs/digits.py", workdir, *_overrides(data_dir, steps)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def _two_process_global_batches(config, builder, position=None):
    """What the two processes feed together: process 0's local batch, then
    process 1's (its devices hold the second half of the 'data' axis)."""
    streams = []
    for index in range(2):
        part = sharding.DataPart(index, 2)
        with mock.patch.object(input_pipeline.multihost_data, "config_data_part", return_value=part):
            streams.append(_TRAIN_BATCHES(config, builder, position or input_pipeline.StreamPosition()))
    for local_batches in zip(*streams):
        yield {k: np.concatenate([b[k] for b in local_batches]) for k in local_batches[0]}


def _final_state(workdir, config):
    from alexnet_jax import checkpointing

    template = steps.create_train_state(config, steps.create_model(config), 89, sharding.make_mesh((1, 1)))
    manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
    state, step = checkpointing.restore_latest(manager, template)
    manager.close()
    return state, step


def test_two_processes_checkpoint_resume_and_match_one_process(tiny_config, digits_data_dir, tmp_path):
    workdir = str(tmp_path / "two")
    log = _launch_two_processes(workdir, digits_data_dir, steps=2)
    assert "JAX process 1 of 2" in log and "4 global cpu devices" in log
    log = _launch_two_processes(workdir, digits_data_dir, steps=4)  # restarts both: resumes at 2
    assert "Resumed from the checkpoint of step 2" in log
    # Only process 0 writes summaries: one event file per launch.
    assert len([f for f in os.listdir(workdir) if f.startswith("events.out.tfevents")]) == 2

    config = tiny_config.copy_and_resolve_references()
    config.num_train_steps = 4
    config.eval_every_steps = 100
    config.checkpoint_every_steps = 2
    config.mesh = (2, 2)
    single = str(tmp_path / "one")
    with mock.patch.object(train.input_pipeline, "train_batches", _two_process_global_batches):
        train.train_and_evaluate(config, single)

    state_two, step_two = _final_state(workdir, config)
    state_one, step_one = _final_state(single, config)
    assert step_two == step_one == 4
    for a, b in zip(jax.tree.leaves(state_two), jax.tree.leaves(state_one)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
