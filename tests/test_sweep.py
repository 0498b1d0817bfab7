"""The sweep launcher (variants, commands, resume) and the report."""

import json
import os
import re
import shlex
import sys

import numpy as np
import pytest

from alexnet_jax import errors
from alexnet_jax.runs import sweep_status
from launch import report, report_tables, run_results, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "digits.py")


def _sweep_file(tmp_path, body: str) -> str:
    path = tmp_path / "my_sweep.py"
    path.write_text(f"from launch.sweep import grid, product\n\n\ndef get_sweep():\n    return {body}\n")
    return str(path)


def test_grid_and_product():
    assert sweep.grid({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert sweep.product([{"a": 1}, {"b": 2}], sweep.grid({"seed": [0, 1]})) == [
        {"a": 1, "seed": 0},
        {"a": 1, "seed": 1},
        {"b": 2, "seed": 0},
        {"b": 2, "seed": 1},
    ]


def test_variant_names_say_the_settings():
    assert sweep.variant_name({"model.use_lrn": False, "model.pool_window": 2}) == "use_lrn=False,pool_window=2"
    assert sweep.variant_name({"model.activation": "tanh", "seed": 3}) == "activation=tanh,seed=3"
    assert sweep.variant_name({}) == "base"


@pytest.mark.parametrize("name", ["ablations", "activations", "seeds", "towers"])
def test_shipped_sweeps_name_real_fields(name):
    variants = sweep.load_variants(os.path.join(REPO, "configs", "sweeps", f"{name}.py"), CONFIG)
    assert len({sweep.variant_name(v) for v in variants}) == len(variants)


def test_ablation_sweep_is_the_papers_grid():
    variants = sweep.load_variants(os.path.join(REPO, "configs", "sweeps", "ablations.py"), CONFIG)
    assert variants[0] == {"model.use_lrn": True, "model.pool_window": 3, "seed": 0}  # the paper's net first
    settings = {tuple((k, v) for k, v in variant.items() if k != "seed") for variant in variants}
    assert settings == {
        (("model.use_lrn", lrn), ("model.pool_window", pool)) for lrn in (True, False) for pool in (3, 2)
    }


def test_towers_sweep_is_the_papers_comparisons():
    variants = sweep.load_variants(os.path.join(REPO, "configs", "sweeps", "towers.py"), CONFIG)
    settings = [tuple((k, v) for k, v in variant.items() if k != "seed") for variant in variants[::2]]
    assert settings == [
        (),  # the two-tower baseline first
        (("model.cross_tower", False),),
        (("model.towers", 1), ("model.filters", (48, 128, 192, 192, 256))),
    ]
    assert [v["seed"] for v in variants] == [0, 1] * 3


def test_dry_run_prints_the_exact_commands(tmp_path, capsys):
    sweep_path = _sweep_file(tmp_path, 'grid({"model.use_lrn": [True, False], "seed": [0]})')
    workdir = str(tmp_path / "runs")
    argv = ["--config", CONFIG, "--sweep", sweep_path, "--workdir", workdir, "--dry-run"]
    assert sweep.main([*argv, "--config.num_train_steps=7", "--config.mesh=(1, 1)"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [shlex.split(line) for line in lines] == [
        [
            sys.executable,
            "-m",
            "alexnet_jax.main",
            f"--config={CONFIG}",
            f"--workdir={workdir}/use_lrn={lrn},seed=0",
            f"--config.model.use_lrn={lrn}",
            "--config.seed=0",
            "--config.num_train_steps=7",
            "--config.mesh=(1, 1)",
        ]
        for lrn in (True, False)
    ]
    assert not os.path.exists(workdir)  # a dry run writes nothing


@pytest.mark.parametrize(
    "body, extra, message",
    [
        ('[{"model.use_lr": False}]', [], "variant 0 (use_lr=False) sets 'model.use_lr', which is not a field of"),
        ("[]", [], "get_sweep() must return a non-empty list of dicts"),
        ('[{"seed": 0}]', ["--config.seed=1"], "--config.seed is swept by"),
        ('[{"seed": 0}]', ["--steps=3"], "unexpected argument '--steps=3'"),
        ('[{"seed": 0}, {"seed": 0}]', [], "are both named 'seed=0'"),
    ],
)
def test_bad_sweeps_are_rejected_in_one_line(tmp_path, body, extra, message):
    with pytest.raises(errors.Error) as error:
        sweep.plan(CONFIG, _sweep_file(tmp_path, body), str(tmp_path / "runs"), extra)
    assert message in str(error.value) and "\n" not in str(error.value)


FAKE_TRAINER = """
import os, sys
args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:])
with open(os.path.join(os.path.dirname(__file__), "calls.txt"), "a") as f:
    f.write(args["workdir"].rsplit("/", 1)[-1] + "\\n")
if args.get("config.seed") == "1" and os.path.exists(os.path.join(os.path.dirname(__file__), "fail")):
    sys.exit(3)
"""


def test_rerun_skips_finished_variants_and_retries_failed_or_changed_ones(tmp_path):
    """Runs a stand-in trainer instead of alexnet_jax.main: the launcher's logic only."""
    (tmp_path / "fake_main.py").write_text(FAKE_TRAINER)
    (tmp_path / "fail").touch()
    sweep_path = _sweep_file(tmp_path, 'grid({"seed": [0, 1, 2]})')
    workdir = str(tmp_path / "runs")

    def run(extra=()):
        runs = sweep.plan(CONFIG, sweep_path, workdir, list(extra), entry_point=[str(tmp_path / "fake_main.py")])
        return sweep.run_all(runs)

    def calls():
        lines = (tmp_path / "calls.txt").read_text().split()
        (tmp_path / "calls.txt").unlink()
        return lines

    assert run() == 1  # seed 1 fails; the others still run
    assert calls() == ["seed=0", "seed=1", "seed=2"]
    assert not os.path.exists(os.path.join(workdir, "seed=1", sweep_status.DONE))
    assert "$ " in open(os.path.join(workdir, "seed=1", sweep.LOG)).read()

    (tmp_path / "fail").unlink()
    assert run() == 0
    assert calls() == ["seed=1"]  # only the unfinished one
    assert run(["--config.num_train_steps=9"]) == 0
    assert calls() == ["seed=0", "seed=1", "seed=2"]  # a changed command is not finished


def test_one_variant_trains_for_real_and_the_report_reads_it(digits_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the variants run `python -m alexnet_jax.main` from here
    sweep_path = _sweep_file(tmp_path, 'grid({"model.activation": ["relu", "tanh"]})')
    workdir = str(tmp_path / "runs")
    tiny = [
        f"--config.data_dir={digits_data_dir}",
        "--config.model.width=0.125",
        "--config.batch_size=16",
        "--config.log_every_steps=1",
        "--config.eval_every_steps=2",
        "--config.inspect_every_steps=0",
        "--config.mesh=(1, 1)",
        "--config.shuffle_buffer_size=64",
    ]
    argv = ["--config", CONFIG, "--sweep", sweep_path, "--workdir", workdir, *tiny, "--index", "1"]
    assert sweep.main([*argv, "--config.num_train_steps=2"]) == 0  # as SLURM array task 1 would
    first = capsys.readouterr().out
    assert "[activation=tanh] test top-1 accuracy:" in first
    # Its own lines, not the chatter: log lines of the project's modules (and clu's scalars) only.
    echoed_sources = set(re.findall(r" ([\w.-]+\.py):\d+\] ", first)) - {"logging_writer.py"}
    assert echoed_sources and echoed_sources <= sweep._OWN_SOURCES and "[Hyperparameters]" not in first
    assert "[Hyperparameters]" in open(os.path.join(workdir, "activation=tanh", sweep.LOG)).read()
    assert sweep.main([*argv, "--config.num_train_steps=2"]) == 0
    assert "finished before, skipped" in capsys.readouterr().out

    # More steps: the same run, extended from its checkpoint.
    tanh = os.path.join(workdir, "activation=tanh")
    assert sweep.main([*argv, "--config.num_train_steps=3"]) == 0
    assert "moved to" not in capsys.readouterr().out
    (restart,) = json.load(open(os.path.join(tanh, "config.json")))["restarts"]
    assert restart["changed"] == {"num_train_steps": {"from": 2, "to": 3}}
    # Another network under the same name: the old run is moved aside, the new one starts afresh.
    assert sweep.main([*argv, "--config.num_train_steps=3", "--config.model.dropout_rate=0.25"]) == 0
    moved = [line for line in capsys.readouterr().out.splitlines() if "moved to" in line]
    assert len(moved) == 1 and "its command changed since it finished" in moved[0]
    (aside,) = [d for d in os.listdir(workdir) if d.startswith("activation=tanh.replaced-")]
    assert json.load(open(os.path.join(workdir, aside, "config.json")))["config"]["model"]["dropout_rate"] == 0.5
    record = json.load(open(os.path.join(tanh, "config.json")))
    assert record["config"]["model"]["dropout_rate"] == 0.25 and record["restarts"] == []
    assert record["last_exit"] == {**record["last_exit"], "status": "finished", "step": 3}

    out = tmp_path / "report"
    assert report.main(["--workdir", workdir, "--out", str(out)]) == 0
    table = (out / "report.md").read_text()
    assert "| `activation=relu` | 0/1 | n/a |" in table  # never started
    tanh_row = next(line for line in table.splitlines() if line.startswith("| `activation=tanh` † | 1/1 |"))
    assert "n/a" in tanh_row and "seed 0: no baseline run finished" in table  # no delta: the baseline has not run
    rows = list(csv_rows(out / "runs.csv"))
    assert [r["status"] for r in rows] == ["not started", "finished"]
    assert 0 <= float(rows[1]["final_top1"]) <= 1 and int(rows[1]["num_params"]) > 0
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")


def csv_rows(path):
    import csv

    with open(path) as f:
        yield from csv.DictReader(f)


def _fake_run(run_dir, eval_top1, train_top1, images_per_sec=(50.0, 100.0, 110.0)):
    from clu import metric_writers

    writer = metric_writers.create_default_writer(run_dir, asynchronous=False)
    writer.write_scalars(0, {"num_params": 1234})
    for i, step in enumerate((10, 20, 30)):
        writer.write_scalars(step, {"train_top1_error": train_top1[i], "images_per_sec": images_per_sec[i]})
        writer.write_scalars(step, {"eval_top1_error": eval_top1[i], "eval_top5_error": eval_top1[i] / 2})
    writer.close()
    with open(os.path.join(run_dir, sweep_status.DONE), "w") as f:
        json.dump({"args": []}, f)


def test_report_numbers_from_known_event_files(tmp_path):
    workdir = str(tmp_path / "sweep")
    runs = [
        sweep_status.Run(sweep.variant_name(v), v, os.path.join(workdir, sweep.variant_name(v)), [])
        for v in sweep.grid({"model.use_lrn": [True, False], "seed": [0, 1]})
    ]
    sweep.write_manifest(workdir, "configs/digits.py", "s.py", [], runs)
    _fake_run(runs[0].workdir, eval_top1=(0.5, 0.1, 0.2), train_top1=(0.9, 0.3, 0.2))
    _fake_run(runs[1].workdir, eval_top1=(0.5, 0.3, 0.3), train_top1=(0.9, 0.2, 0.1))
    _fake_run(runs[2].workdir, eval_top1=(0.5, 0.4, 0.3), train_top1=(0.9, 0.8, 0.7))
    _fake_run(runs[3].workdir, eval_top1=(0.5, 0.5, 0.5), train_top1=(0.9, 0.8, 0.2))

    _, results = run_results.collect(workdir, target_error=0.25)
    baseline, no_lrn = report_tables.summarise(results)
    assert baseline["variant"] == "use_lrn=True" and no_lrn["variant"] == "use_lrn=False"
    assert baseline["final_top1"] == pytest.approx(0.25) and baseline["final_top1_std"] == pytest.approx(0.0707, 1e-3)
    assert baseline["best_top1"] == pytest.approx(0.2) and baseline["best_top5"] == pytest.approx(0.1)
    assert baseline["steps_to_target"] == pytest.approx(25.0)  # step 30 (seed 0) and 20 (seed 1)
    assert baseline["images_per_sec"] == pytest.approx(105.0)  # the first (compiling) period left out
    assert baseline["num_params"] == 1234
    # Paired by seed: final top-1 0.3 - 0.2 and 0.5 - 0.3.
    assert no_lrn["final_top1_delta"] == pytest.approx(0.15) and no_lrn["final_top1_delta_std"] == pytest.approx(
        np.std([0.1, 0.2], ddof=1)
    )
    assert no_lrn["steps_to_target_n"] == 1 and no_lrn["steps_to_target"] == 30.0  # seed 0 never got there
    table = report_tables.markdown(
        {"config": "c", "sweep": "s", "extra_overrides": [], "baseline": "b"}, [baseline, no_lrn], 0.25, "T", "w"
    )
    assert "| `use_lrn=False` | 2/2 | 40.00 ± 14.14 | +15.00 ± 7.07 |" in table
    assert "30 (1 of 2 reached)" in table


def test_report_says_where_a_run_failed_and_pools_finished_runs_rates(tmp_path):
    from clu import metric_writers

    workdir = str(tmp_path / "sweep")
    runs = [
        sweep_status.Run(sweep.variant_name(v), v, os.path.join(workdir, sweep.variant_name(v)), [])
        for v in sweep.grid({"seed": [0, 1, 2]})
    ]
    sweep.write_manifest(workdir, "configs/digits.py", "s.py", [], runs)
    _fake_run(runs[0].workdir, eval_top1=(0.5, 0.1, 0.2), train_top1=(0.9, 0.3, 0.2))
    writer = metric_writers.create_default_writer(runs[1].workdir, asynchronous=False)
    writer.write_scalars(5, {"images_per_sec": 1.0})  # a diverging run's partial rate
    writer.write_scalars(10, {"images_per_sec": 2.0})
    writer.close()
    error = "FloatingPointError: loss is nan at step 12: stopping"
    last_exit = {"status": "failed", "step": 12, "error": error}
    (tmp_path / "sweep" / "seed=1" / "config.json").write_text(
        json.dumps({"config": {"seed": 1}, "last_exit": last_exit})
    )
    os.makedirs(runs[2].workdir)
    writer = metric_writers.create_default_writer(runs[2].workdir, asynchronous=False)
    writer.write_scalars(7, {"images_per_sec": 3.0})  # interrupted (killed) after step 7's log
    writer.close()

    _, results = run_results.collect(workdir, target_error=0.25)
    assert [r.status for r in results] == ["finished", f"failed at step 12 ({error})", "stopped at step 7"]
    (row,) = report_tables.summarise(results)
    assert row["finished"] == 1 and row["images_per_sec"] == pytest.approx(105.0)  # the finished run's alone


def test_report_of_a_sweep_where_no_run_finished_fails_in_one_line(tmp_path):
    workdir = str(tmp_path / "sweep")
    runs = [sweep_status.Run(f"seed={i}", {"seed": i}, os.path.join(workdir, f"seed={i}"), []) for i in (0, 1)]
    sweep.write_manifest(workdir, "configs/digits.py", "s.py", [], runs)
    with pytest.raises(SystemExit) as error:
        report.main(["--workdir", workdir])
    assert str(error.value) == (
        f"error: no run of the sweep in {workdir} finished (seed=0 not started; seed=1 not started): nothing to report"
    )
    assert not os.path.exists(os.path.join(workdir, "report.md"))


def test_report_without_a_sweep_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match="sweep.json not found: run `python -m launch.sweep"):
        report.main(["--workdir", str(tmp_path)])
