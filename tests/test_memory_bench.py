"""bench.memory: the stages of a real run, each with its peak RSS."""

import os
import re
import subprocess
import sys
from pathlib import Path

from bench import memory

ROOT = Path(__file__).resolve().parents[1]


def test_run_argv_puts_the_config_first_and_the_given_overrides_last():
    argv = memory.run_argv(["bench", "--config.num_train_steps=5", "--config", "configs/digits.py"], "/tmp/s")
    assert argv[:2] == ["bench", "--config=configs/digits.py"]
    assert argv.index("--config.num_train_steps=3") < argv.index("--config.num_train_steps=5")  # the given wins
    assert "--config.compilation_cache_dir=/tmp/s/xla_cache" in argv and "--workdir=/tmp/s/run" in argv
    kept = memory.run_argv(["bench", "--workdir=/w", "--config.compilation_cache_dir="], "/tmp/s")
    assert kept[1] == f"--config={memory.DEFAULT_CONFIG}"
    assert not any(a.startswith("--workdir=/tmp/s") or a.endswith("/tmp/s/xla_cache") for a in kept)


def test_digits_run_reports_every_stage():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as a plain run
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--config", "configs/digits.py", "--config.num_train_steps=2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    names = [row[0].lstrip("| ") for row in rows[1:]]
    for stage in (
        "start-up: imports",
        "state: initialise",
        "data: first batches",
        "compile inspection step",
        "inspection + summaries written (step 1)",
        "compile train step (whole batch)",
        "first train step",
        "compile evaluation step",
        "evaluation (step 2)",
        "save (orbax, written) (step 2)",
    ):
        assert any(name.startswith(stage) for name in names), (stage, names)
    peaks = [float(row[3]) for row in rows[1:]]
    assert peaks == sorted(peaks) and peaks[-1] > 300  # ru_maxrss only grows; JAX and TF alone take more
    assert re.search(r"^peak RSS of the run: \d+ MB$", done.stdout, re.M)
    assert done.stdout.startswith("machine: ") or "\nmachine: " in done.stdout
