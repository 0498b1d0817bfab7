"""Jobs that share a folder (alexnet_jax.files.folder_lock): a lock refused while
its holder lives, taken over when the holder's process is gone or its
heartbeat stopped; the run's workdir lock and the data_dir's preparation
locks in use."""

import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time

import pytest

from alexnet_jax.data import pipeline
from alexnet_jax.files import folder_lock
from alexnet_jax.runs import restart
from alexnet_jax.train import loop
from alexnet_jax.train.preemption import Preempted

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_holder(path, **fields) -> None:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "since": "then", "heartbeat": time.time()}
    path.write_text(json.dumps({"token": "theirs", **record, **fields}))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=60)
    return child.pid


def test_a_held_lock_is_refused_in_one_line_naming_its_holder_then_free_once_released(tmp_path):
    path = tmp_path / "run" / folder_lock.RUN_LOCK
    holder = folder_lock.FolderLock(path, "--workdir run")
    holder.acquire()
    with pytest.raises(folder_lock.FolderInUseError) as refused:
        folder_lock.FolderLock(path, "--workdir run").acquire()
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and "another --workdir" in message
    assert f"host {socket.gethostname()}, pid {os.getpid()}, since " in message
    holder.release()
    assert os.listdir(path.parent) == []  # no lock, no temporary file
    with folder_lock.FolderLock(path, "--workdir run"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path):
    path = tmp_path / "x.lock"
    _write_holder(path, pid=_dead_pid())  # a fresh heartbeat: on this host the pid decides
    lock = folder_lock.FolderLock(path, "x")
    lock.acquire()
    assert json.loads(path.read_text())["token"] != "theirs"
    lock.release()
    assert os.listdir(tmp_path) == []


def test_a_lock_of_another_host_is_stale_once_its_heartbeat_stops(tmp_path):
    path = tmp_path / "x.lock"
    _write_holder(path, host="elsewhere", heartbeat=time.time() - 60)  # older than stale_after_s
    with folder_lock.FolderLock(path, "x", stale_after_s=30):
        assert json.loads(path.read_text())["host"] == socket.gethostname()
    # A fresh heartbeat that does not advance while watched (another host's clock may differ).
    _write_holder(path, host="elsewhere")
    with folder_lock.FolderLock(path, "x", stale_after_s=0.3, heartbeat_s=0.05):
        assert json.loads(path.read_text())["host"] == socket.gethostname()


def test_a_lock_of_another_host_whose_heartbeat_advances_is_refused(tmp_path):
    path = tmp_path / "x.lock"
    _write_holder(path, host="elsewhere")
    stop = threading.Event()

    def beat() -> None:  # the other host's live run
        while not stop.wait(0.02):
            _write_holder(path, host="elsewhere")

    thread = threading.Thread(target=beat)
    thread.start()
    try:
        with pytest.raises(folder_lock.FolderInUseError, match="host elsewhere"):
            folder_lock.FolderLock(path, "x", stale_after_s=60, heartbeat_s=0.05).acquire()
    finally:
        stop.set()
        thread.join()
    assert json.loads(path.read_text())["host"] == "elsewhere"  # left alone


def test_the_holder_renews_its_heartbeat(tmp_path):
    path = tmp_path / "x.lock"
    with folder_lock.FolderLock(path, "x", heartbeat_s=0.02):
        first = json.loads(path.read_text())["heartbeat"]
        deadline = time.monotonic() + 30
        while json.loads(path.read_text())["heartbeat"] == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert json.loads(path.read_text())["heartbeat"] > first
    assert os.listdir(tmp_path) == []


def test_a_job_waits_for_a_data_dir_preparation_and_says_so_when_the_wait_expires(tmp_path, tiny_config, monkeypatch):
    """get_builder on an empty data_dir takes its preparation lock: while
    another live job holds it this job prepares nothing, and a bounded wait
    ends in one line naming the lock file and the holder."""
    monkeypatch.setattr(folder_lock, "PREPARE_WAIT_S", 0.2)
    config = tiny_config
    config.data_dir = str(tmp_path / "data")
    lock_file = tmp_path / "data" / folder_lock.PREPARE_LOCK
    with folder_lock.FolderLock(lock_file, "another job's preparation"):
        with pytest.raises(folder_lock.FolderInUseError) as expired:
            pipeline.get_builder(config)
    message = str(expired.value)
    assert "\n" not in message and str(lock_file) in message and f"pid {os.getpid()}" in message
    assert sorted(os.listdir(tmp_path / "data")) == []  # nothing prepared meanwhile
    # Free again: this job prepares the data, and its cache under the cache's own lock.
    builder = pipeline.get_builder(config)
    path, _ = pipeline.cached_part(builder, "train", config.resize_size, config.cache_format, _part())
    with folder_lock.FolderLock(f"{path}.lock", "another job's cache"):
        with pytest.raises(folder_lock.FolderInUseError, match="cache"):
            pipeline.ensure_cached(builder, "train", config.resize_size, config.cache_format, _part())
    pipeline.ensure_cached(builder, "train", config.resize_size, config.cache_format, _part())
    assert not any(name.endswith(".lock") for name in os.listdir(os.path.dirname(path)))


def _part():
    from alexnet_jax.parallel import sharding

    return sharding.DataPart(0, 1)


@pytest.mark.parametrize("stop", [RuntimeError("disk gone"), Preempted(0)])
def test_a_run_takes_over_a_dead_runs_lock_and_releases_it_when_it_stops(tmp_path, tiny_config, monkeypatch, stop):
    """A requeued run after kill -9 (its lock left, its pid gone) takes the
    workdir's lock before its first write, and leaves none when it fails or
    is stopped by a signal (finishing: the end-to-end tests below)."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    lock_file = workdir / folder_lock.RUN_LOCK
    _write_holder(lock_file, pid=_dead_pid())
    holders = []

    def check_restart(*args):  # the run's first write, just after the lock is taken
        holders.append(json.loads(lock_file.read_text())["pid"])
        raise stop

    monkeypatch.setattr(restart, "check_restart", check_restart)
    with pytest.raises(type(stop)):
        loop.train_and_evaluate(tiny_config, workdir)
    assert holders == [os.getpid()] and os.listdir(workdir) == []  # released on failure


_HOLD = """
import sys, time
from alexnet_jax.files import folder_lock
lock = folder_lock.FolderLock(sys.argv[1], "the first run")
lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_start_on_a_live_runs_workdir_stops_in_one_line(tmp_path, digits_data_dir):
    workdir = tmp_path / "run"
    lock_file = workdir / folder_lock.RUN_LOCK
    first = subprocess.Popen([sys.executable, "-c", _HOLD, str(lock_file)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        result = subprocess.run(
            [sys.executable, "-m", "alexnet_jax.main", "--config=configs/digits.py", f"--workdir={workdir}"]
            + _tiny_flags(digits_data_dir),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        first.kill()
        first.wait(timeout=60)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1, result.stderr[-3000:]
    assert last.startswith(f"error: --workdir {workdir} is in use by another job (host {socket.gethostname()}, ")
    assert f"pid {first.pid}, since " in last and "Traceback" not in result.stderr
    assert os.listdir(workdir) == [folder_lock.RUN_LOCK]  # nothing of its own written


def _tiny_flags(data_dir: str, steps: int = 2) -> list[str]:
    return [
        f"--config.data_dir={data_dir}",
        "--config.model.width=0.125",
        "--config.batch_size=16",
        "--config.eval_batch_size=64",
        f"--config.num_train_steps={steps}",
        "--config.eval_every_steps=100",
        "--config.inspect_every_steps=0",
        "--config.checkpoint_every_steps=100",
        "--config.shuffle_buffer_size=64",
        "--config.mesh=(1, 1)",
        "--config.model.conv_wgrad=xla",
    ]


# Runs alexnet_jax.main with tfds's download_and_prepare held until every job
# of the start has arrived there or at the data_dir's preparation lock: without
# the lock they all prepare at once (FileExistsError: Cannot rename ...).
_STARTED_TOGETHER = """
import os, runpy, sys, time
marks, jobs = sys.argv.pop(1), int(sys.argv.pop(1))


def arrived(kind):
    open(os.path.join(marks, f"{kind}-{os.getpid()}"), "w").close()
    deadline = time.monotonic() + 120
    while len({name.split("-")[1] for name in os.listdir(marks)}) < jobs and time.monotonic() < deadline:
        time.sleep(0.05)


from tensorflow_datasets.core import dataset_builder

prepare = dataset_builder.DatasetBuilder.download_and_prepare
dataset_builder.DatasetBuilder.download_and_prepare = lambda self, **kw: (arrived("prepare"), prepare(self, **kw))[1]
try:
    from alexnet_jax.files import folder_lock

    acquire = folder_lock.FolderLock.acquire

    def acquire_arrived(self):
        if self.path.name == folder_lock.PREPARE_LOCK:
            open(os.path.join(marks, f"lock-{os.getpid()}"), "w").close()
        return acquire(self)

    folder_lock.FolderLock.acquire = acquire_arrived
except ImportError:  # before folder_lock
    pass
sys.argv[0] = "alexnet_jax/main.py"
runpy.run_module("alexnet_jax.main", run_name="__main__")
"""


def _start_together(tmp_path, commands: list[list[str]]) -> tuple[list[str], list[str]]:
    """Starts `python -m alexnet_jax.main ARGS` for each ARGS at once; the
    stderr of each once all are done, and the processes that prepared the dataset."""
    marks = tmp_path / "marks"
    marks.mkdir()
    wrapper = tmp_path / "started_together.py"
    wrapper.write_text(_STARTED_TOGETHER)
    env = {**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": ""}  # one CPU device each
    jobs = [
        subprocess.Popen(
            [sys.executable, str(wrapper), str(marks), str(len(commands)), *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    try:
        errors = [job.communicate(timeout=400)[1] for job in jobs]
    finally:
        for job in jobs:
            job.kill()
            job.wait(timeout=60)
    for job, stderr in zip(jobs, errors):
        assert job.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
    return errors, sorted(name for name in os.listdir(marks) if name.startswith("prepare-"))


def _no_locks_left(*folders) -> None:
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            assert not [name for name in dirs + files if ".lock" in name or ".tmp-" in name], root


def test_two_runs_started_together_on_an_empty_data_dir_both_train_on_one_preparation(tmp_path):
    # Before the sweep's test, which then finds the programs this test's two
    # jobs compiled in the session's compilation cache (conftest): its three
    # jobs would compile them at once, three times over.
    data_dir = str(tmp_path / "data")
    workdirs = [str(tmp_path / name) for name in ("a", "b")]
    errors, preparers = _start_together(
        tmp_path, [["--config=configs/digits.py", f"--workdir={w}", *_tiny_flags(data_dir)] for w in workdirs]
    )
    assert len(preparers) == 1  # one job prepared the digits, the other waited for it
    assert sum(stderr.count("Preprocessing train once") for stderr in errors) == 1  # and one cache
    cache = tmp_path / "data" / "sklearn_digits"
    assert len([p for p in cache.glob("*/alexnet_cache/train-*")]) == 1
    _no_locks_left(data_dir, *workdirs)


def test_a_sweep_arrays_three_variants_started_together_on_an_empty_data_dir_all_finish(tmp_path, capsys):
    from launch import sweep

    sweep_file = tmp_path / "seeds.py"
    sweep_file.write_text('from launch.sweep import grid\n\n\ndef get_sweep():\n    return grid({"seed": [0, 1, 2]})\n')
    data_dir, workdir = str(tmp_path / "data"), str(tmp_path / "runs")
    argv = ["--config", "configs/digits.py", "--sweep", str(sweep_file), "--workdir", workdir, "--dry-run"]
    assert sweep.main([*argv, *_tiny_flags(data_dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    commands = [shlex.split(line)[3:] for line in lines]  # the arguments after -m alexnet_jax.main
    assert len(commands) == 3
    _, preparers = _start_together(tmp_path, commands)
    assert len(preparers) == 1
    for name in ("seed=0", "seed=1", "seed=2"):
        record = json.loads((tmp_path / "runs" / name / "config.json").read_text())
        assert record["last_exit"]["status"] == "finished"
    _no_locks_left(data_dir, workdir)
