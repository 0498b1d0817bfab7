"""The stages of bench/imagenet_rehearsal.py, each in a process of its own so
that its peak memory is its own (the parent reads it from os.wait4):

    python -m bench.rehearsal_stages STAGE ROOT RESULT_JSON PER_CLASS NUM_VAL

writes RESULT_JSON: the stage's work time, its CPU time (every thread), the
CPU time of its main thread and the bytes on disk of what it wrote. The
main thread is the part no extra core shortens: tfds's builder generates,
serializes and writes there, and the project's cache writer and statistics
loop there over batches, while decoding, encoding and the sums run in
thread pools (tf.data's, the sum workers) sized to the usable cores.
Layout under ROOT: manual/ (the tars), tfds/ (the tfds data_dir, with the
project's caches and statistics inside).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
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


def _config(root: str, cache_format: str):
    from configs import paper

    config = paper.get_config()
    config.data_dir, config.manual_dir, config.cache_format = data_dir(root), manual_dir(root), cache_format
    return config


def _cache_folders(builder, fmt: str) -> list[str]:
    """The project's cache folders of format `fmt` (every split and part)."""
    folder = os.path.join(str(builder.data_dir), "alexnet_cache")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return [os.path.join(folder, name) for name in names if name.endswith(f"-{fmt}")]


def run(stage: str, root: str, per_class: int, num_val: int) -> int:
    """Does `stage`; the bytes on disk of what it wrote."""
    if stage == "tars":
        from bench import photos_dataset

        os.makedirs(manual_dir(root), exist_ok=True)
        photos_dataset.write_imagenet_tars(manual_dir(root), per_class, num_val)
        return folder_bytes(manual_dir(root))
    from alexnet_jax.data import data_stats, datasets, pipeline

    if stage.startswith("cache-"):
        fmt = stage.removeprefix("cache-").removesuffix(ONE_CPU)
    else:  # the statistics: one pass over the originals, or the jpeg cache's sums
        fmt = "none" if stage == "stats-pass" else "jpeg"
    config = _config(root, fmt)
    builder = datasets.get_builder(config)  # stage "tfds": tfds's download_and_prepare from the manual_dir
    if stage == "tfds":
        return folder_bytes(data_dir(root), skip="alexnet_cache")
    if stage.startswith("cache-"):
        for folder in _cache_folders(builder, fmt):  # each cache stage times a whole write
            shutil.rmtree(folder)
        pipeline.prepare(config, builder)  # the train and validation caches, with the image sums
        return sum(folder_bytes(folder) for folder in _cache_folders(builder, fmt))
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
    usage, start, main_start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), time.thread_time()
    disk_bytes = run(stage, root, per_class, num_val)
    wall = time.perf_counter() - start
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = end.ru_utime + end.ru_stime - usage.ru_utime - usage.ru_stime
    measured = {"wall_s": wall, "cpu_s": cpu, "main_thread_s": time.thread_time() - main_start}
    measured["cores"] = cpu_info.usable_cpus()
    with open(result, "w") as f:
        json.dump({**measured, "disk_bytes": disk_bytes}, f)


if __name__ == "__main__":
    main(sys.argv)
