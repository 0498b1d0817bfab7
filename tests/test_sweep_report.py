"""A sweep's report compares like with like; every reader of a sweep agrees
on which variants finished and says which it left out; the sweep's console
keeps to the runs' own lines. Fake sweep folders (config.json, event files,
sweep_done.json), no training."""

import json
import logging
import math
import os
import types

import pytest

from alexnet_jax.runs import reading, sweep_status
from launch import report_curves, report_tables, run_results, sweep


def _make_sweep(tmp_path, variants, extra=()):
    """A sweep folder with its manifest; the runs' folders are left to _fake_run."""
    workdir = str(tmp_path / "sweep")
    runs = []
    for variant in variants:
        name = sweep.variant_name(variant)
        args = ["-m", "alexnet_jax.main", *(f"--config.{k}={v}" for k, v in variant.items()), *extra]
        runs.append(sweep_status.Run(name, variant, os.path.join(workdir, name), args))
    sweep.write_manifest(workdir, "configs/digits.py", "s.py", list(extra), runs)
    return workdir, runs


def _fake_run(run, final_top1, config=None, last_exit="finished", done_args=None, eval_steps=(10, 20)):
    """A run's folder as training leaves it: event files, config.json (its
    `last_exit`: "finished", a failure's dict, or None for none) and, unless
    `done_args` is False, sweep_done.json (the manifest's command by default)."""
    from clu import metric_writers

    writer = metric_writers.create_default_writer(run.workdir, asynchronous=False)
    for step in eval_steps:
        writer.write_scalars(step, {"train_top1_error": 0.5, "eval_top1_error": final_top1 + (step < eval_steps[-1])})
    writer.close()
    record = {"config": {"seed": run.overrides.get("seed", 0), **(config or {})}, "restarts": []}
    if last_exit == "finished":
        last_exit = {"status": "finished", "step": eval_steps[-1], "error": None, "time": "2026-12-01T10:00:00"}
    if last_exit is not None:
        record["last_exit"] = last_exit
    with open(os.path.join(run.workdir, "config.json"), "w") as f:
        json.dump(record, f)
    if done_args is not False:
        with open(os.path.join(run.workdir, sweep_status.DONE), "w") as f:
            json.dump({"args": run.args if done_args is None else done_args}, f)


def _failed(step):
    return {"status": "failed", "step": step, "error": "FloatingPointError: loss is nan", "time": "2026-12-01T11:00:00"}


def test_differences_pair_only_seeds_where_both_runs_finished(tmp_path):
    """The issue's sweep: baseline 0.40 / 0.40 / 0.90 (failed at step 100), variant 0.42 on all three."""
    workdir, runs = _make_sweep(
        tmp_path, sweep.product(sweep.grid({"model.use_lrn": [True, False]}), sweep.grid({"seed": [0, 1, 2]}))
    )
    for run, top1 in zip(runs, (0.40, 0.40, 0.90, 0.42, 0.42, 0.42)):
        failed = run.name == "use_lrn=True,seed=2"
        _fake_run(run, top1, last_exit=_failed(100) if failed else "finished", done_args=False if failed else None)
    manifest, results = run_results.collect(workdir, target_error=0.25)
    baseline, variant = report_tables.summarise(results)
    assert baseline["final_top1"] == pytest.approx(0.40)  # its finished runs
    assert variant["final_top1_delta"] == pytest.approx(0.02) and variant["final_top1_delta_std"] == pytest.approx(0)
    assert variant["delta_runs"] == 2
    table = report_tables.markdown(manifest, [baseline, variant], 0.25, "T", workdir)
    assert "| `use_lrn=False` † | 3/3 | 42.00 ± 0.00 | +2.00 ± 0.00 |" in table
    assert "Δ over 2 of 3 runs; left out: seed 2: the baseline's run failed at step 100 (FloatingPointError" in table


def test_a_variant_extended_then_failed_is_failed_for_every_reader(tmp_path):
    workdir, (run,) = _make_sweep(tmp_path, [{"seed": 0}], extra=["--config.num_train_steps=30"])
    # It finished 20 steps (sweep_done.json says so), then failed extending to 30.
    _fake_run(run, 0.4, last_exit=_failed(25), done_args=[*run.args[:-1], "--config.num_train_steps=20"])
    status = "failed at step 25 (FloatingPointError: loss is nan)"
    _, (result,) = run_results.collect(workdir, target_error=0.25)
    assert result.status == status and not sweep_status.is_finished(run)
    # The same after a failed extension outside the sweep: sweep_done.json names the sweep's command.
    os.remove(os.path.join(run.workdir, sweep_status.DONE))
    with open(os.path.join(run.workdir, sweep_status.DONE), "w") as f:
        json.dump({"args": run.args}, f)
    assert not sweep_status.is_finished(run) and run_results.collect(workdir, target_error=0.25)[1][0].status == status


def test_a_variant_rerun_at_another_length_is_left_out_of_the_difference_and_said(tmp_path):
    workdir, runs = _make_sweep(tmp_path, sweep.grid({"model.use_lrn": [True, False], "seed": [0]}))
    base = {"num_train_steps": 100, "optimizer": {"learning_rate": 0.01}, "log_every_steps": 10, "data_dir": "/a"}
    _fake_run(runs[0], 0.40, config={**base, "model": {"use_lrn": True}})
    # Re-run with another rate and length (and, not to be flagged, other logging and data_dir, and the swept field).
    rerun = {"num_train_steps": 60, "optimizer": {"learning_rate": 0.02}, "log_every_steps": 5, "data_dir": "/b"}
    _fake_run(runs[1], 0.30, config={**rerun, "model": {"use_lrn": False}})
    manifest, results = run_results.collect(workdir, target_error=0.25)
    rows = report_tables.summarise(results)
    assert math.isnan(rows[1]["final_top1_delta"]) and rows[1]["delta_runs"] == 0
    table = report_tables.markdown(manifest, rows, 0.25, "T", workdir)
    (note,) = [line for line in table.splitlines() if line.startswith("- † `use_lrn=False`")]
    assert note == (
        "- † `use_lrn=False`: Δ over 0 of 1 runs; left out: seed 0: its config differs from the baseline's: "
        "num_train_steps=60 (baseline: 100), optimizer.learning_rate=0.02 (baseline: 0.01)."
    )
    assert "| `use_lrn=False` † | 1/1 | 30.00 | n/a |" in table


def test_sweep_readers_name_the_variants_they_skip(tmp_path, monkeypatch, caplog):
    """evaluate/predict --sweep: one warning per variant left out, saying why."""
    workdir, runs = _make_sweep(tmp_path, sweep.grid({"seed": [0, 1, 2, 3, 4]}))
    _fake_run(runs[0], 0.4)
    _fake_run(runs[1], 0.4, last_exit=_failed(12), done_args=False)
    stopped = {"status": "stopped", "step": 8, "error": "SIGTERM", "time": "2026-12-01T11:00:00"}
    _fake_run(runs[2], 0.4, last_exit=stopped, done_args=False)
    _fake_run(runs[3], 0.4, last_exit=None, done_args=False)  # killed: no word
    monkeypatch.setattr(reading, "FLAGS", types.SimpleNamespace(workdir=[], sweep=workdir))
    with caplog.at_level(logging.WARNING):
        assert reading.workdirs() == [runs[0].workdir]
    assert [r.getMessage() for r in caplog.records] == [
        f"--sweep {workdir}: skipping seed=1: failed at step 12 (FloatingPointError: loss is nan)",
        f"--sweep {workdir}: skipping seed=2: stopped at step 8 (a signal; resumable)",
        f"--sweep {workdir}: skipping seed=3: not finished (killed, or still running)",
        f"--sweep {workdir}: skipping seed=4: not started",
    ]


def test_single_evaluations_are_drawn_as_points(tmp_path, monkeypatch):
    workdir, runs = _make_sweep(tmp_path, sweep.grid({"seed": [0, 1]}))
    for run in runs:
        _fake_run(run, 0.4, eval_steps=(30,))
    _, results = run_results.collect(workdir, target_error=0.25)
    import matplotlib.figure

    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda figure, *_, **__: saved.append(figure))
    report_curves.plot_curves(results, 0.25, str(tmp_path / "curves.png"))
    (line,) = saved[0].axes[1].lines  # the validation panel
    assert line.get_marker() == "o" and line.get_xydata().tolist() == [[30.0, pytest.approx(40.0)]]


CHATTY_TRAINER = r"""
import sys
print("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR", file=sys.stderr)
print("I0000 00:00:1796183995.652059    8219 cpu_feature_guard.cc:227] This TensorFlow binary is optimized",
      file=sys.stderr)
print("To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow", file=sys.stderr)
print("I1202 04:00:01.561102 139815067016064 xla_bridge.py:849] Unable to initialize backend 'tpu'", file=sys.stderr)
print("I1202 04:00:12.786483 139815067016064 loop.py:142] AlexNet with 325114 parameters", file=sys.stderr)
print("I1202 04:00:12.793857 139812414088896 logging_writer.py:80] [Hyperparameters] {'batch_size': 16}",
      file=sys.stderr)
print("I1202 04:00:31.552977 139812414088896 logging_writer.py:48] [1] train_loss=2.50127", file=sys.stderr)
if "--config.seed=1" in sys.argv:
    raise RuntimeError("a bug, with its traceback")
print("test top-1 accuracy: 10.0% (360 examples)")
"""


def test_a_sweep_keeps_start_up_chatter_in_each_variants_log(tmp_path, capsys):
    trainer = tmp_path / "chatty_main.py"
    trainer.write_text(CHATTY_TRAINER)
    workdir, runs = _make_sweep(tmp_path, sweep.grid({"seed": [0, 1]}))
    runs = [sweep_status.Run(r.name, r.overrides, r.workdir, [str(trainer), *r.args[2:]]) for r in runs]
    assert sweep.run_all(runs) == 1
    out = capsys.readouterr().out
    for chatter in ("absl::InitializeLog", "cpu_feature_guard", "To enable", "xla_bridge", "Hyperparameters"):
        assert chatter not in out
        assert chatter in open(os.path.join(runs[0].workdir, sweep.LOG)).read()
    assert "[seed=0] I1202 04:00:12.786483 139815067016064 loop.py:142] AlexNet with 325114 parameters" in out
    assert "[seed=0] I1202 04:00:31.552977 139812414088896 logging_writer.py:48] [1] train_loss=2.50127" in out
    assert "[seed=0] test top-1 accuracy: 10.0% (360 examples)" in out
    assert "[seed=1] RuntimeError: a bug, with its traceback" in out  # a failure's last line
    assert "Traceback" not in out


def test_an_interrupted_variant_is_not_finished_and_says_so(tmp_path):
    """A second Ctrl-C leaves last_exit "interrupted" (alexnet_jax/train/preemption.py): resumable, not finished."""
    workdir, (run,) = _make_sweep(tmp_path, [{"seed": 0}])
    interrupted = {"status": "interrupted", "step": 6, "error": "SIGINT received", "time": "2026-12-01T11:00:00"}
    _fake_run(run, 0.4, last_exit=interrupted, done_args=False)
    assert sweep_status.run_status(run) == "interrupted at step 6 (resumable)" and not sweep_status.is_finished(run)
