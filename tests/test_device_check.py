"""bench/device_check.sh end to end at its small sizes, as on a GPU node
without TensorFlow: a sitecustomize makes `import tensorflow`,
`tensorflow_datasets` and `clu` fail in the check's process, so any import
of them, however indirect, fails the run."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

from bench import device_check

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCKED = ("tensorflow", "tensorflow_datasets", "clu")
# The blocker: None in sys.modules makes every import of the name (or of anything under it) raise ImportError.
SITECUSTOMIZE = f"import sys\nfor _name in {BLOCKED!r}:\n    sys.modules[_name] = None\n"
TIMEOUT_S = 170  # the check takes about 40 s on the 2-core VM; the brief allows under 3 minutes


def _env(tmp_path: pathlib.Path) -> dict[str, str]:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path / "tmp"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocker), env.get("PYTHONPATH")]))
    return env


def _table(output: str) -> dict[str, list[str]]:
    """Row name -> its other cells, from the check's markdown table."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "row":
            rows[cells[0]] = cells[1:]
    return rows


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_the_blocker_blocks(tmp_path):
    """Without this the test below could pass with TensorFlow imported."""
    env = _env(tmp_path)
    for name in BLOCKED:
        run = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True)
        assert run.returncode != 0 and f"import of {name} halted" in run.stderr, (name, run.stderr)


def test_small_check_runs_end_to_end_without_tensorflow(tmp_path):
    env = _env(tmp_path)
    try:
        run = subprocess.run(
            [str(ROOT / "bench" / "device_check.sh"), "--small"],
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    finally:
        leftovers = list((tmp_path / "tmp").glob("device_check-*"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert not leftovers, f"the temporary raw cache was left behind: {leftovers}"
    assert re.search(r"^Devices: \d+ x cpu", out, re.M) and re.search(r"^CPU: .+ logical CPUs", out, re.M), out
    rows = _table(out)
    batch = device_check.SMALL.batch
    workers = device_check.worker_counts(device_check.SMALL, True, None)
    assert workers and workers[0] == 1
    expected = [f"paper step, {dtype}, batch {batch}, synthetic input on the device" for dtype in device_check.DTYPES]
    expected += [f"raw reader, {device_check._workers(w)}, batch {batch}, page cache" for w in workers]
    assert [name for name in rows if "fed by the raw reader" not in name] == expected, out
    (fed,) = [cells for name, cells in rows.items() if "fed by the raw reader" in name]
    for name in expected:
        assert _number(rows[name][0]) > 0, (name, rows[name])
    for name in expected[:2]:
        assert _number(rows[name][1]) > 0, (name, rows[name])  # ms/step
    assert _number(fed[0]) > 0 and _number(fed[1]) > 0 and _number(fed[2]) > 0, fed
    assert re.search(r"^Fed / synthetic \d", out, re.M), out
    assert re.search(r"exit status 0 after \d+ s", out), out


def test_full_sizes_keep_the_briefs_worker_list_and_bounds():
    """The GPU sizes: batch 128, every worker count, each row bounded."""
    full = device_check.FULL
    assert full.batch == 128 and device_check.worker_counts(full, False, None) == (1, 2, 4, 8, 16)
    assert device_check.DTYPES == ("float32", "bfloat16")
    # Step rows stop at their time budget; the budgets alone stay far below 8 minutes.
    budget = 3 * full.step_seconds + len(full.workers) * full.read_seconds
    assert budget < 120 and full.max_steps > 0
    assert device_check.worker_counts(full, False, "3,5") == (3, 5)


def test_a_failure_is_the_scripts_exit_status(tmp_path):
    run = subprocess.run(
        [str(ROOT / "bench" / "device_check.sh"), "--no_such_option"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "exit status 2 after" in run.stdout, (run.stdout, run.stderr)
