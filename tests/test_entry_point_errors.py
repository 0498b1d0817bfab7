"""docs/troubleshooting.md's error table ("What each error means"), walked row by row.

Each row's `error:` line (its `<...>` and `...` parts matching anything, `N`
a number) is triggered, from the entry points where that is cheap (a
subprocess that stops before JAX starts, or an entry point's `main` called
in this process) and otherwise from the function that raises it, ended the
way every entry point ends it (`errors.one_line_errors`); the exit status is
the row's `exit status K`, else 1. A new row needs a trigger here (or a line
in NOT_TRIGGERED saying which test covers it).
"""

import os
import re
import subprocess
import sys
import types

import pytest
from absl import flags
from absl.testing import flagsaver

from alexnet_jax import errors
from alexnet_jax.data import image_folder, pipeline
from alexnet_jax.files import folder_lock
from alexnet_jax.runs import config_json, reading, restart
from alexnet_jax.runs.validation import validate_config
from alexnet_jax.train import checkpointing, finite_guard, loop, setup
from launch import report, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(REPO, "configs", "sweeps", "seeds.py")

NOT_TRIGGERED = {
    "saving the checkpoint of step N": "a save failing mid-run: tests/test_train.py",
    "cifar10 is not prepared": "a download blocked by a dead proxy: tests/test_datasets.py",
    "<workdir>/checkpoints/N holds another train state": "needs checkpoints: tests/test_damaged_checkpoints.py",
    "reading <workdir>/checkpoints/N failed 3 times": "injected read errors: tests/test_damaged_checkpoints.py",
}


def _table() -> list[tuple[str, str]]:
    with open(os.path.join(REPO, "docs", "troubleshooting.md")) as f:
        section = f.read().split("## What each error means", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(.+?)` \| (.+) \|$", section, re.M)
    assert len(rows) >= 10, section
    return rows


def _pattern(line: str) -> re.Pattern:
    pattern = re.sub(r"(\\ )?\\\.\\\.\\\.(\\ )?", ".*", re.escape(line))  # " ... ": anything
    pattern = re.sub(r"<[^>]+>", ".+?", pattern)  # re.escape leaves < and > as they are
    return re.compile("error: " + re.sub(r"\bN\b", r"\\d+", pattern))


def _run(module: str, *args: str, env: dict | None = None) -> tuple[str, int, str]:
    """(who, exit status, stderr's last line) of `python -m module args` (with `env` added)."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in result.stderr and result.stdout == "", result.stderr[-3000:]
    return module, result.returncode, result.stderr.strip().splitlines()[-1]


class _Context:
    def __init__(self, request, tmp_path, capsys):
        self.request, self.tmp, self.capsys = request, tmp_path, capsys

    def config(self):
        return self.request.getfixturevalue("tiny_config").copy_and_resolve_references()

    def blocker(self):
        """A file where a folder is wanted: not writable, even for root."""
        path = self.tmp / "a_file"
        path.write_text("")
        return path

    def in_process(self, who: str, call, *args) -> tuple[str, int, str]:
        """(who, exit status, the one line) of `call(*args)` ended as an entry point ends it."""
        self.capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            errors.one_line_errors(call)(*args)
        code = stop.value.code
        if isinstance(code, str):  # Python prints it on stderr and exits 1
            return who, 1, code
        return who, code, self.capsys.readouterr().err.strip().splitlines()[-1]


def _misspelt_field(ctx):
    yield _run("alexnet_jax.main", "--config=configs/digits.py", f"--workdir={ctx.tmp}", "--config.model.use_lnr=0")
    argv = ["--config", "configs/digits.py", "--sweep", SWEEP, "--workdir", str(ctx.tmp / "s"), "--dry-run"]
    yield ctx.in_process("launch.sweep", sweep.main, [*argv, "--config.model.use_lnr=0"])


def _misspelt_flag(ctx):
    yield _run("alexnet_jax.main", "--config=configs/digits.py", f"--work_dir={ctx.tmp}")
    argv = ["--config", "configs/digits.py", "--sweep", SWEEP, "--dry-run"]
    yield ctx.in_process("launch.sweep", sweep.main, [*argv, "--workdir", str(ctx.tmp), "--work_dir", str(ctx.tmp)])
    yield ctx.in_process("launch.report", report.main, ["--work_dir", str(ctx.tmp)])


def _missing_config_file(ctx):
    yield _run("alexnet_jax.main", "--config", "configs/digit.py", f"--workdir={ctx.tmp / 'run'}")
    argv = ["--config", "configs/digit.py", "--sweep", SWEEP, "--workdir", str(ctx.tmp / "s"), "--dry-run"]
    yield ctx.in_process("launch.sweep", sweep.main, argv)


def _misspelt_malloc(ctx):
    workdir = f"--workdir={ctx.tmp / 'run'}"
    yield _run("alexnet_jax.main", "--config=configs/digits.py", workdir, env={"ALEXNET_JAX_MALLOC": "typo"})


def _shortened(ctx):
    config = ctx.config()
    config.num_train_steps = 2
    yield ctx.in_process("a restart", checkpointing.check_not_shortened, config, ctx.tmp, 4, 2)


def _workdir_in_use(ctx):
    from etils import epath

    workdir = epath.Path(ctx.tmp / "run")
    workdir.mkdir()
    with folder_lock.FolderLock(workdir / folder_lock.RUN_LOCK, "a live run"):  # held by a live process (this one)
        with folder_lock.RunLock() as second:
            yield ctx.in_process("a second start", second.acquire, workdir)


def _out_of_range(ctx):
    config = ctx.config()
    config.model.pool_stride = 0
    yield ctx.in_process("validate_config", validate_config, config)


def _trained_with_another_value(ctx):
    config, workdir = ctx.config(), ctx.tmp / "run"
    config.model.activation = "tanh"
    restart.check_restart(config, workdir, 0.0)  # the first start writes config.json
    config.model.activation = "relu"
    yield ctx.in_process("a restart", restart.check_restart, config, workdir, 0.0)


def _workdir_not_writable(ctx):
    yield ctx.in_process("check_writable", config_json.check_writable, ctx.blocker() / "run")


def _out_not_writable(ctx):
    # Refused before the workdir is even read (it does not exist here), let alone embedded.
    out = ctx.blocker() / "grid.png"
    yield _run("alexnet_jax.retrieval", f"--workdir={ctx.tmp / 'none'}", f"--out={out}")
    yield ctx.in_process("launch.report", report.main, ["--workdir", str(ctx.tmp), "--out", str(out.parent)])


def _workdir_does_not_exist(ctx):
    yield _run("alexnet_jax.predict", f"--workdir={ctx.tmp / 'runs' / 'nonexistent'}", "a.png")


def _no_config_json(ctx):
    from configs import default

    yield ctx.in_process("a reader", reading.config_for_reading, ctx.tmp, default.get_config(), {}, False)


def _imagenet_not_prepared(ctx):
    from configs import paper

    config = paper.get_config()
    config.data_dir = str(ctx.tmp / "tfds")
    yield ctx.in_process("get_builder", pipeline.get_builder, config)


def _not_a_split(ctx):
    config = ctx.config()
    config.eval_split = "validation"
    yield ctx.in_process("check_dataset", lambda: setup.check_dataset(config, pipeline.get_builder(config)))


def _unsplit_image_folder(ctx):
    (ctx.tmp / "pets" / "cat").mkdir(parents=True)
    (ctx.tmp / "pets" / "cat" / "1.png").write_bytes(b"")
    yield ctx.in_process("image_folder.scan", image_folder.scan, str(ctx.tmp / "pets"))


def _raw_cache_on_a_bucket(ctx):
    config = ctx.config()
    config.cache_format, config.data_dir = "raw", "gs://bucket/tensorflow_datasets"
    yield ctx.in_process("validate_config", validate_config, config)


def _diverged(ctx):
    nan_loss = types.SimpleNamespace(loss=types.SimpleNamespace(compute=lambda: float("nan")))
    yield ctx.in_process("the NaN guard", finite_guard.check_loss, 12, nan_loss)


TRIGGERS = {
    "config.model.use_lnr does not exist": _misspelt_field,
    "--work_dir is not a flag": _misspelt_flag,
    "--config configs/digit.py: no such file": _missing_config_file,
    "ALEXNET_JAX_MALLOC='typo' is not one of": _misspelt_malloc,
    "config.num_train_steps=2 is below the newest checkpoint's step 4": _shortened,
    "--workdir <path> is in use by another job": _workdir_in_use,
    "config.model.pool_stride=0": _out_of_range,
    "config.model.activation='relu' but this run was trained with": _trained_with_another_value,
    "--workdir <path> is not writable": _workdir_not_writable,
    "--out <folder> is not writable": _out_not_writable,
    "--workdir <path> does not exist": _workdir_does_not_exist,
    "<workdir>/config.json not found": _no_config_json,
    "imagenet2012 is not prepared": _imagenet_not_prepared,
    "config.eval_split='validation' is not a split": _not_a_split,
    "config.image_folder=<path> holds no images": _unsplit_image_folder,
    "cache_format='raw' reads its records with os.pread": _raw_cache_on_a_bucket,
    "loss is nan at step N": _diverged,
}


@pytest.mark.parametrize("line, meaning", _table(), ids=lambda cell: cell[:40])
def test_each_row_of_the_error_table(line, meaning, request, tmp_path, capsys):
    trigger = next((fn for key, fn in TRIGGERS.items() if line.startswith(key)), None)
    if trigger is None:
        reason = next((why for key, why in NOT_TRIGGERED.items() if line.startswith(key)), None)
        assert reason, f"error table row `{line}` has no trigger in {__file__}: add one, or say in NOT_TRIGGERED where"
        pytest.skip(reason)
    status = int(re.search(r"exit status (\d)", meaning).group(1)) if "exit status" in meaning else 1
    pattern = _pattern(line)
    for who, exit_status, last_line in trigger(_Context(request, tmp_path, capsys)):
        assert (exit_status, bool(pattern.match(last_line))) == (status, True), (who, last_line, pattern.pattern)


def test_main_makes_only_the_projects_errors_one_line(tiny_config, tmp_path, monkeypatch):
    """A ValueError or FloatingPointError from a library (a bug) keeps its traceback."""
    import tensorflow as tf

    from alexnet_jax import main

    def raising(error):
        def train_and_evaluate(config, workdir):
            raise error

        return train_and_evaluate

    monkeypatch.setattr(tf.config, "set_visible_devices", lambda *args: None)  # TensorFlow has started here
    was_parsed = flags.FLAGS.is_parsed()
    flags.FLAGS.mark_as_parsed()
    try:
        with flagsaver.flagsaver(config=tiny_config, workdir=str(tmp_path)):
            for library_error in (ValueError("a bug in flax"), FloatingPointError("a bug in jax")):
                monkeypatch.setattr(loop, "train_and_evaluate", raising(library_error))
                with pytest.raises(type(library_error)) as raised:
                    main.main(["main"])
                assert raised.value is library_error
            monkeypatch.setattr(loop, "train_and_evaluate", raising(errors.RunError("the workdir holds another run")))
            with pytest.raises(SystemExit) as stop:
                main.main(["main"])
            assert stop.value.code == "error: the workdir holds another run"
    finally:
        if not was_parsed:
            flags.FLAGS.unparse_flags()
