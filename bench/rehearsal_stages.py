"""The stages of bench/imagenet_rehearsal.py, each in a process of its own so
that its peak memory is its own (the parent reads it from os.wait4):

    python -m bench.rehearsal_stages STAGE ROOT RESULT_JSON PER_CLASS NUM_VAL

writes RESULT_JSON: the stage's work time, its CPU time (every thread), the
CPU time of its busiest thread (the part no extra core shortens) and the
bytes on disk of what it wrote. Layout under ROOT: manual/ (the tars),
tfds/ (the tfds data_dir, with the project's caches and statistics inside).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import threading
import time

STAGES = ("tars", "tfds", "cache-jpeg-1cpu", "cache-jpeg", "cache-png", "cache-raw", "stats-pass", "stats-sums")
ONE_CPU = "-1cpu"  # a stage pinned to one CPU: against the same stage on all, how it scales


def manual_dir(root: str) -> str:
    return os.path.join(root, "manual")


def data_dir(root: str) -> str:
    return os.path.join(root, "tfds")


def folder_bytes(folder: str, skip: str = "") -> int:
    """Bytes of the files under `folder`, leaving out folders named `skip`."""
    total = 0
    for parent, folders, files in os.walk(folder):
        folders[:] = [f for f in folders if f != skip]
        total += sum(os.path.getsize(os.path.join(parent, f)) for f in files)
    return total


class ThreadCpu:
    """CPU seconds of each thread of this process, sampled from /proc every
    `period` s (threads that end between samples keep their last reading)."""

    def __init__(self, period: float = 0.25) -> None:
        self._tick = os.sysconf("SC_CLK_TCK")
        self._names: dict[str, str] = {}
        self._start = self._read()
        self._last: dict[str, float] = {}
        self._stop = threading.Event()
        self._period = period
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _read(self) -> dict[str, float]:
        seconds = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    name, _, rest = f.read().partition(" (")[2].rpartition(")")  # the name may hold spaces
                    fields = rest.split()
            except OSError:  # the thread ended meanwhile
                continue
            seconds[tid] = (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime
            self._names.setdefault(tid, name)
        return seconds

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            self._last.update(self._read())

    def busiest(self) -> tuple[float, str]:
        """The most CPU seconds one thread spent since the start, and that thread's name."""
        self._stop.set()
        self._thread.join()
        self._last.update(self._read())
        spent = {tid: seconds - self._start.get(tid, 0.0) for tid, seconds in self._last.items()}
        tid = max(spent, key=spent.get)
        return spent[tid], self._names[tid]


def _config(root: str, cache_format: str):
    from configs import paper

    config = paper.get_config()
    config.data_dir, config.manual_dir, config.cache_format = data_dir(root), manual_dir(root), cache_format
    return config


def _cache_bytes(builder, fmt: str) -> int:
    folder = os.path.join(str(builder.data_dir), "alexnet_cache")
    return sum(folder_bytes(os.path.join(folder, name)) for name in os.listdir(folder) if name.endswith(f"-{fmt}"))


def _remove_caches(builder, fmt: str) -> None:
    folder = os.path.join(str(builder.data_dir), "alexnet_cache")
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name.endswith(f"-{fmt}"):
            shutil.rmtree(os.path.join(folder, name))


def run(stage: str, root: str, per_class: int, num_val: int) -> int:
    """Does `stage`; the bytes on disk of what it wrote."""
    if stage == "tars":
        from bench import photos_dataset

        os.makedirs(manual_dir(root), exist_ok=True)
        photos_dataset.write_imagenet_tars(manual_dir(root), per_class, num_val)
        return folder_bytes(manual_dir(root))
    from alexnet_jax.data import data_stats, datasets, pipeline

    fmt = stage.removeprefix("cache-").removesuffix(ONE_CPU) if stage.startswith("cache-") else None
    fmt = fmt or ("none" if stage == "stats-pass" else "jpeg")
    config = _config(root, fmt)
    builder = datasets.get_builder(config)  # stage "tfds": tfds's download_and_prepare from the manual_dir
    if stage == "tfds":
        return folder_bytes(data_dir(root), skip="alexnet_cache")
    if stage.startswith("cache-"):
        _remove_caches(builder, fmt)  # each cache stage times a whole write
        pipeline.prepare(config, builder)  # the train and validation caches, with the image sums
        return _cache_bytes(builder, fmt)
    stats_file = data_stats.cache_path(config, builder)
    if os.path.exists(stats_file):  # computed afresh: each stats stage times its own way
        os.remove(stats_file)
    data_stats.load_or_compute(config, builder)
    return os.path.getsize(stats_file)


def main(argv: list[str]) -> None:
    if argv[1].endswith(ONE_CPU):  # before TensorFlow sizes its thread pools from the affinity
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    from alexnet_jax.platform import cpu_info, machine_settings

    machine_settings.apply_machine_settings(huge_pages=True, absl_app=False)  # as alexnet_jax.main runs
    stage, root, result, per_class, num_val = argv[1], argv[2], argv[3], int(argv[4]), int(argv[5])
    if stage not in STAGES:
        raise SystemExit(f"error: stage {stage!r} is not one of {', '.join(STAGES)}")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # as alexnet_jax.main: TensorFlow keeps off the accelerators
    threads = ThreadCpu()
    usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    disk_bytes = run(stage, root, per_class, num_val)
    wall = time.perf_counter() - start
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = end.ru_utime + end.ru_stime - usage.ru_utime - usage.ru_stime
    busiest_s, busiest_name = threads.busiest()
    measured = {"wall_s": wall, "cpu_s": cpu, "busiest_thread_s": busiest_s, "busiest_thread": busiest_name}
    measured["cores"] = cpu_info.usable_cpus()
    with open(result, "w") as f:
        json.dump({**measured, "disk_bytes": disk_bytes}, f)


if __name__ == "__main__":
    main(sys.argv)
