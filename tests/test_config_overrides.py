"""Misspelt --config.* fields: one line naming the field and the closest
valid names, from every entry point, before anything runs."""

import os
import re
import subprocess
import sys

import pytest

from alexnet_jax import errors
from alexnet_jax.runs import overrides, reading
from launch import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "field, message",
    [
        ("model.use_lrn", None),
        ("model", None),
        ("modle.use_lrn", "config.modle does not exist; did you mean config.model or config.model_parallel?"),
        ("model.use_lnr", "config.model.use_lnr does not exist; did you mean config.model.use_lrn?"),
        ("batch_size.x", "config.batch_size.x does not exist: config.batch_size is a value, not a group of fields"),
        ("zzzz", "config.zzzz does not exist; alexnet_jax/runs/defaults.py lists every field"),
    ],
)
def test_unknown_fields_name_the_closest_ones(field, message):
    assert overrides.unknown_field(field) == message


def test_override_names_in_every_flag_form():
    argv = ["--config=c.py", "--config.a.b=1", "--config.c", "2", "--noconfig.d", "-config.e=3", "--workdir=x"]
    assert overrides.override_names([*argv, "--", "--config.f=4"]) == ["a.b", "c", "d", "e"]


@pytest.mark.parametrize(
    "module", ["alexnet_jax.main", "alexnet_jax.evaluate", "alexnet_jax.predict", "alexnet_jax.retrieval"]
)
def test_entry_points_refuse_a_misspelt_field_in_one_line(module, tmp_path):
    args = ["--config=configs/digits.py", f"--workdir={tmp_path}", "--config.modle.use_lrn=0"]
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == (
        "error: config.modle does not exist; did you mean config.model or config.model_parallel?"
    )
    assert "Traceback" not in result.stderr and os.listdir(tmp_path) == []


def test_sweep_refuses_a_misspelt_field_before_any_variant(tmp_path):
    path = tmp_path / "typo.py"
    path.write_text('def get_sweep():\n    return [{"seed": 0}, {"model.use_lnr": False}]\n')
    config = os.path.join(REPO, "configs", "digits.py")
    with pytest.raises(errors.UsageError) as error:
        sweep.plan(config, str(path), str(tmp_path / "runs"), [])
    assert str(error.value) == (
        f"{path}: variant 1 (use_lnr=False) sets 'model.use_lnr', which is not a field of {config}: "
        "config.model.use_lnr does not exist; did you mean config.model.use_lrn?"
    )
    with pytest.raises(errors.UsageError, match=r"^config.optimiser does not exist; did you mean config.optimizer"):
        sweep.plan(config, str(_ok(tmp_path)), str(tmp_path / "runs"), ["--config.optimiser.momentum=0.8"])
    assert not (tmp_path / "runs").exists()


def test_readers_refuse_a_misspelt_field_without_a_config_file(tmp_path):
    """Without --config, evaluate/predict/retrieval's config flag starts from
    every field's default (alexnet_jax/runs/defaults.py), and config_flags
    applies the overrides as the flag is defined: refused there, one line (it
    was three chained tracebacks). TensorFlow's own C++ start-up lines, printed
    as it is imported (oneDNN's notice on some CPUs), are not the command's."""
    args = [f"--workdir={tmp_path}", "--config.eval_view=ten_view"]
    result = subprocess.run(
        [sys.executable, "-m", "alexnet_jax.evaluate", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    tf_startup = re.compile(
        r"WARNING: All log messages before absl::InitializeLog|[IWEF]\d{4} [\d:.]+ +\d+ \w+\.cc:\d+\]"
    )
    lines = [line for line in result.stderr.strip().splitlines() if not tf_startup.match(line)]
    assert (result.returncode, result.stdout, lines) == (
        2,
        "",
        [
            "error: config.eval_view does not exist; did you mean config.eval_views or config.eval_split or "
            "config.eval_batch_size?"
        ],
    )


def test_the_reading_flags_refuse_a_misspelt_field_before_they_are_defined(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["predict", "--workdir=runs/x", "--config.model.use_lnr=0", "a.png"])
    with pytest.raises(SystemExit) as stop:
        reading.define_flags(several_workdirs=True)  # predict's, retrieval's and evaluate's flags
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: config.model.use_lnr does not exist; did you mean config.model.use_lrn?\n"


@pytest.mark.parametrize(
    "argv, files",
    [
        (["--config=configs/digits.py", "--config.seed=1"], ["configs/digits.py"]),
        (["--config", "configs/paper.py:arg", "--workdir", "x"], ["configs/paper.py"]),
        (["-config=a.py", "--config_x=b.py", "--", "--config=c.py"], ["a.py"]),
    ],
)
def test_config_files_in_every_flag_form(argv, files):
    assert overrides.config_files(argv) == files


def test_a_missing_config_file_is_named_with_the_closest_files(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert overrides.missing_config_file(["--config=configs/digits.py"]) is None
    assert overrides.missing_config_file(["--config", "configs/digit.py"]) == (
        "--config configs/digit.py: no such file; did you mean configs/digits.py?"
    )
    assert overrides.missing_config_file([f"--config={tmp_path}/none.py"]) == (
        f"--config {tmp_path}/none.py: no such file; give a config file such as configs/digits.py"
    )


def _ok(tmp_path):
    path = tmp_path / "ok.py"
    path.write_text('def get_sweep():\n    return [{"seed": 0}]\n')
    return path
