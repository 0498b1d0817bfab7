"""ImageNet's preparation rehearsed at a small scale, through the real path, and
extrapolated to ILSVRC-2012's 1,281,167 + 50,000 images.

    python -m bench.imagenet_rehearsal                  # 3 photos per class: 3,000 train + 1,000 val
    python -m bench.imagenet_rehearsal --per-class 20 --val 5000 --steps 5 --cores 8,32,96

Writes ILSVRC2012_img_train.tar (one tar per synset, all 1,000) and
ILSVRC2012_img_val.tar (labelled by tfds's own validation label file) of
photo-like JPEGs of ImageNet's usual sizes (bench/photos_dataset.py, ~100 kB
each) into a temporary folder under --tmp, then runs each stage as a process
of its own (bench/rehearsal_stages.py): tfds's imagenet2012
download_and_prepare from that manual_dir (alexnet_jax.data.datasets), the
project's preprocessed caches of both splits in each format
(data.pipeline.prepare; the jpeg cache also pinned to one CPU, so that its
row beside the all-CPU one shows how the writer scales), the training-set
statistics from the cache's sums and, for comparison, in one pass over the
originals (data.data_stats), and a few training steps plus the validation
(python -m alexnet_jax.main with configs/paper.py). Per stage: images/s (and
per core), the CPU it kept busy (CPU time / wall / cores), its main thread's
CPU time (the serial part), peak memory (ru_maxrss of the stage's process,
from os.wait4) and disk per image; then hours on N cores
and GB for the whole of ILSVRC-2012. The folder is removed at the end (--keep
keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from alexnet_jax.platform import cpu_info
from bench import rehearsal_stages

TRAIN_FULL, VAL_FULL = 1_281_167, 50_000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What each stage is, for the table.
WHAT = {
    "tars": "(bench) write the tars",
    "tfds": "tfds download_and_prepare",
    "cache-jpeg-1cpu": "cache, jpeg, pinned to 1 CPU",
    "cache-jpeg": "cache, jpeg",
    "cache-png": "cache, png",
    "cache-raw": "cache, raw",
    "stats-pass": "statistics, one pass (cache none)",
    "stats-sums": "statistics from jpeg cache sums",
    "train": "main: train + validation",
}


class StageFailed(RuntimeError):
    """A stage's process exited with an error; the message holds its log's tail."""


def _run(command: list[str], log_path: str) -> tuple[float, float, float]:
    """Runs `command` (output to `log_path`); its wall s, CPU s and peak RSS in GB."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}  # the child's own environment: quiet TensorFlow
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode:
        with open(log_path) as log:
            tail = log.read()[-3000:]
        killed = " (SIGKILL: out of memory?)" if process.returncode == -9 else ""
        raise StageFailed(f"{tail}\nerror: {' '.join(command)} exited with {process.returncode}{killed}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20  # ru_maxrss: kB on Linux


def _train_command(root: str, steps: int, micro_batch: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "alexnet_jax.main",
        "--config",
        "configs/paper.py",
        f"--workdir={os.path.join(root, 'run')}",
        f"--config.data_dir={rehearsal_stages.data_dir(root)}",
        f"--config.manual_dir={rehearsal_stages.manual_dir(root)}",
        f"--config.num_train_steps={steps}",
        # Fixed: -1 would first time every micro-batch size on this machine; the whole
        # batch of 128 (0) took 14 GB here and was killed for memory.
        f"--config.micro_batch_size={micro_batch}",
        f"--config.compilation_cache_dir={os.path.join(root, 'xla')}",
    ]


def rehearse(root: str, per_class: int, num_val: int, steps: int, micro_batch: int) -> list[dict]:
    """Runs every stage; one row each."""
    train, logs = 1000 * per_class, os.path.join(root, "logs")
    os.makedirs(logs)
    rows = []
    for stage in rehearsal_stages.STAGES:
        result = os.path.join(logs, f"{stage}.json")
        command = [sys.executable, "-m", "bench.rehearsal_stages", stage, root, result, str(per_class), str(num_val)]
        _, _, peak_gb = _run(command, os.path.join(logs, f"{stage}.log"))
        with open(result) as f:
            measured = json.load(f)
        images = train if stage.startswith("stats") else train + num_val
        full = TRAIN_FULL if stage.startswith("stats") else TRAIN_FULL + VAL_FULL
        rows.append({"stage": stage, "images": images, "full": full, "peak_gb": peak_gb, **measured})
        print(f"  {stage}: {measured['wall_s']:.1f} s", file=sys.stderr, flush=True)
    log = os.path.join(logs, "train.log")
    try:  # timed from outside: start-up and compiling included
        wall, cpu, peak_gb = _run(_train_command(root, steps, micro_batch), log)
    except StageFailed as failed:  # the preparation's rows still print
        print(failed, file=sys.stderr)
        return rows
    with open(log) as f:
        accuracy = [line.strip() for line in f if "top-1 accuracy" in line]
    rows.append(
        {
            "stage": "train",
            "images": steps * 128 + num_val,
            "full": None,
            "peak_gb": peak_gb,
            "wall_s": wall,
            "cpu_s": cpu,
            "main_thread_s": None,
            "disk_bytes": None,
            "cores": cpu_info.usable_cpus(),
            "note": accuracy[-1] if accuracy else "",
        }
    )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| stage | images | wall s | img/s | img/s per core | CPU busy (cores) | main thread s | peak RSS GB "
        "| disk kB/img |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        rate = row["images"] / row["wall_s"]
        main = "-" if row["main_thread_s"] is None else f"{row['main_thread_s']:.1f}"
        per_image = row["disk_bytes"] is not None and not row["stage"].startswith("stats")  # stats: one file
        disk = f"{row['disk_bytes'] / row['images'] / 1e3:.1f}" if per_image else "-"
        cores = row["cores"]  # the CPUs the stage's process could use
        lines.append(
            f"| {WHAT[row['stage']]} | {row['images']:,} | {row['wall_s']:.1f} | {rate:.1f} | {rate / cores:.1f} "
            f"| {row['cpu_s'] / row['wall_s']:.2f} of {cores} | {main} | {row['peak_gb']:.2f} | {disk} |"
        )
    return "\n".join(lines)


def extrapolation(rows: list[dict], core_counts: list[int]) -> str:
    """Hours at this run's wall rate, and on N cores: the stage's CPU time
    spread over N cores, but never below its main thread's (the serial
    part), scaled by image count. The latter is a lower bound: it assumes the
    parallel part scales and the disk keeps up (no waiting, which the wall
    rate includes)."""
    header = " | ".join(f"h on {n} cores" for n in core_counts)
    lines = [
        f"| stage | images at full size | usable cores (CPU / main thread) | h at this run's wall rate | {header} "
        "| GB at full size |",
        "|---|---:|---:|---:|" + "---:|" * len(core_counts) + "---:|",
    ]
    for row in rows:
        # The real tars are downloaded; training is the accelerator's; the pinned stage is there for its rate.
        if row["full"] is None or row["stage"] == "tars" or row["stage"].endswith(rehearsal_stages.ONE_CPU):
            continue
        # The statistics from the sums read one small file per cache part: no work per image.
        scale = 1.0 if row["stage"] == "stats-sums" else row["full"] / row["images"]
        hours = [max(row["cpu_s"] / n, row["main_thread_s"]) * scale / 3600 for n in core_counts]
        per_image = row["disk_bytes"] / row["images"]
        gb = row["disk_bytes"] / 1e9 if row["stage"].startswith("stats") else per_image * row["full"] / 1e9
        lines.append(
            f"| {WHAT[row['stage']]} | {row['full']:,} | {row['cpu_s'] / row['main_thread_s']:.1f} "
            f"| {row['wall_s'] * scale / 3600:.2f} | " + " | ".join(f"{h:.2f}" for h in hours) + f" | {gb:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=3, help="training photos per synset (1,000 synsets)")
    parser.add_argument("--val", type=int, default=1000, help="validation photos (at most 50,000)")
    parser.add_argument("--steps", type=int, default=3, help="training steps of configs/paper.py (batch 128)")
    parser.add_argument("--micro-batch", type=int, default=32, help="the training step's micro_batch_size")
    parser.add_argument("--cores", default="8,16,64", help="core counts of the extrapolation, comma-separated")
    parser.add_argument("--tmp", default="/tmp", help="where the temporary folder goes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args()
    if args.per_class < 1 or not 0 < args.val <= VAL_FULL or 1000 * args.per_class < 128:
        parser.error("--per-class must be >= 1 (1,000 x it >= the batch of 128) and 0 < --val <= 50000")
    core_counts = [int(n) for n in args.cores.split(",")]
    root = tempfile.mkdtemp(prefix="imagenet_rehearsal-", dir=args.tmp)
    print(f"rehearsing in {root}", file=sys.stderr, flush=True)
    try:
        rows = rehearse(root, args.per_class, args.val, args.steps, args.micro_batch)
    except StageFailed as failed:
        raise SystemExit(str(failed)) from None
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    cores = cpu_info.usable_cpus()
    print(f"CPU: {cpu_info.cpu_description()}; {cores} usable")
    print(
        f"{1000 * args.per_class:,} train + {args.val:,} validation photos; {args.steps} training steps of 128 "
        f"(micro-batches of {args.micro_batch})"
    )
    print()
    print(table(rows))
    print()
    print(f"Extrapolated to ILSVRC-2012 ({TRAIN_FULL:,} + {VAL_FULL:,} images; statistics: the training set):")
    print()
    print(extrapolation(rows, core_counts))
    print()
    trained = rows[-1]["stage"] == "train"
    print(f"train: {rows[-1]['note']} (wall includes start-up and compiling)" if trained else "train: failed (above)")


if __name__ == "__main__":
    main()
