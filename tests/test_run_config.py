"""A run's own config.json: written once, checked on every restart, and the
only thing evaluate, predict and retrieval need to read a workdir."""

import concurrent.futures
import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import alexnet_jax
from alexnet_jax.files import paths
from alexnet_jax.inference import predictions
from alexnet_jax.runs import config_fields, config_json, field_rules, reading, restart, run_notes
from alexnet_jax.train import checkpointing, loop
from configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_config_field_is_classified_exactly_once():
    fields = set(config_fields.flat_fields(default.get_config()))
    defining, may_change = set(field_rules.DEFINING), set(field_rules.MAY_CHANGE)
    assert not defining & may_change, "in both tables"
    assert fields - defining - may_change == set(), (
        "new config fields: add each to field_rules.DEFINING (a restart must keep it) or MAY_CHANGE"
    )
    assert (defining | may_change) - fields == set(), "tables name fields configs/default.py does not have"


def _short(config, steps):
    short = config.copy_and_resolve_references()
    short.num_train_steps = steps
    return short


def _record(workdir):
    with open(config_json.path(workdir)) as f:
        return json.load(f)


def test_first_start_writes_config_json_once_and_atomically(tiny_config, tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    config = _short(tiny_config, 3)
    loop.train_and_evaluate(config, workdir)
    record = _record(workdir)
    assert config_fields.flat_fields(record["config"]) == config_fields.flat_fields(config)
    assert record["command"][0] == sys.executable and record["restarts"] == []
    assert record["last_exit"]["status"] == "finished" and record["last_exit"]["step"] == 3
    assert "git_commit" in record and record["version"] == alexnet_jax.__version__
    assert os.listdir(workdir).count("config.json") == 1 and not any(".tmp-" in f for f in os.listdir(workdir))

    assert record["micro_batch_sizes"] == [{"from_step": 0, "micro_batch_size": 0}]

    # An equal config resumes (here: a finished run, evaluated again) and changes nothing.
    created = record["created"]
    loop.train_and_evaluate(config, workdir)
    assert _record(workdir)["created"] == created and _record(workdir)["restarts"] == []
    assert _record(workdir)["micro_batch_sizes"] == record["micro_batch_sizes"]

    # A write that dies half-way leaves the previous file whole.
    before = open(config_json.path(workdir)).read()

    def broken_dump(obj, f, **kwargs):
        f.write('{"config": {')
        raise OSError("disk full")

    monkeypatch.setattr(paths.json, "dump", broken_dump)  # paths.write_json writes every record
    with pytest.raises(OSError, match="disk full"):
        run_notes.record_exit(workdir, "failed", 3, "test")
    assert open(config_json.path(workdir)).read() == before


def test_the_micro_batch_size_is_noted_when_it_changes(tiny_config, tmp_path):
    """micro_batch_size=-1 is resolved per machine: a restart elsewhere may
    compute with another size, and config.json says from which step."""
    workdir = tmp_path / "run"
    restart.check_restart(tiny_config, workdir, 0.0)
    for step, size in ((0, 0), (30, 0), (60, 64), (90, 64), (120, 0)):
        run_notes.record_micro_batch_size(workdir, step, size)
    assert _record(workdir)["micro_batch_sizes"] == [
        {"from_step": 0, "micro_batch_size": 0},
        {"from_step": 60, "micro_batch_size": 64},
        {"from_step": 120, "micro_batch_size": 0},
    ]


def test_restart_refuses_defining_changes_and_logs_the_others(tiny_config, tmp_path, caplog):
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(_short(tiny_config, 3), workdir)
    before = open(config_json.path(workdir)).read()

    changed = _short(tiny_config, 6)
    changed.model.activation = "tanh"
    changed.optimizer.learning_rate = 0.5
    with pytest.raises(ValueError) as error:
        loop.train_and_evaluate(changed, workdir)
    message = str(error.value)
    assert "\n" not in message
    assert "config.model.activation='tanh' but this run was trained with 'relu'" in message
    assert "config.optimizer.learning_rate=0.5 but this run was trained with 0.01" in message
    assert f"({config_json.path(workdir)}); use a new --workdir, or pass the run's value" in message
    assert open(config_json.path(workdir)).read() == before and checkpointing.latest_step(workdir) == 3

    extended = _short(tiny_config, 6)  # more steps, another evaluation period and mesh: accepted
    extended.eval_every_steps = 2
    extended.mesh = (-1, 1)
    extended.eval_batch_size = 8
    with caplog.at_level(logging.INFO):
        summary = loop.train_and_evaluate(extended, workdir)
    assert summary["eval_num_examples"] == 360 and checkpointing.latest_step(workdir) == 6
    logged = [r.getMessage() for r in caplog.records if "changed on this restart" in r.getMessage()]
    assert sorted(logged) == [
        "config.eval_batch_size changed on this restart: 64 -> 8",
        "config.eval_every_steps changed on this restart: 3 -> 2",
        "config.mesh changed on this restart: (1, 1) -> (-1, 1)",
        "config.num_train_steps changed on this restart: 3 -> 6",
    ]
    (restart,) = _record(workdir)["restarts"]
    assert restart["changed"]["num_train_steps"] == {"from": 3, "to": 6}
    assert _record(workdir)["config"]["num_train_steps"] == 6  # the next restart compares with this


def test_learning_rate_drops_already_taken_cannot_move(tmp_path):
    workdir = str(tmp_path)
    config = default.get_config()
    config.optimizer.drop_epochs = (25, 51, 79)
    restart.check_restart(config, workdir, epochs_done=0)  # first start: writes config.json
    later = config.copy_and_resolve_references()
    later.optimizer.drop_epochs = (25, 60, 90)  # at epoch 30: only future drops moved
    restart.check_restart(later, workdir, epochs_done=30)
    earlier = later.copy_and_resolve_references()
    earlier.optimizer.drop_epochs = (20, 60, 90)  # the drop at 25 was already taken
    with pytest.raises(ValueError, match=r"config.optimizer.drop_epochs=\(20, 60, 90\) but this run was trained"):
        restart.check_restart(earlier, workdir, epochs_done=30)


def test_a_workdir_from_before_config_json_resumes_with_one_warning(tiny_config, tmp_path, caplog):
    workdir = str(tmp_path / "old")
    loop.train_and_evaluate(_short(tiny_config, 3), workdir)
    os.remove(config_json.path(workdir))
    with caplog.at_level(logging.WARNING):
        loop.train_and_evaluate(_short(tiny_config, 4), workdir)
    warnings = [r.getMessage() for r in caplog.records if "config cannot be checked" in r.getMessage()]
    assert len(warnings) == 1 and checkpointing.latest_step(workdir) == 4
    assert not os.path.exists(config_json.path(workdir))  # nothing is claimed that was not checked


def _run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_reading_a_workdir_needs_only_the_workdir(tiny_config, tmp_path):
    """A tanh run on the plateau schedule, evaluated, predicted and retrieved
    from its workdir alone; the wrong network or a changed one is refused."""
    from PIL import Image
    from sklearn.datasets import load_digits

    workdir = str(tmp_path / "tanh")
    config = _short(tiny_config, 2)
    config.eval_every_steps = 2
    config.model.activation = "tanh"
    config.model.lrn1_before_relu = False
    config.optimizer.schedule = "plateau"
    summary = loop.train_and_evaluate(config, workdir)

    scan = np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)
    Image.fromarray(scan).resize((40, 40)).save(tmp_path / "zero.png")
    out = tmp_path / "grid.png"
    # Four readers of one workdir, independent of each other: started at once.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        evaluated, refused, predicted, retrieved = pool.map(
            lambda args: _run(*args),
            [
                ("alexnet_jax.evaluate", f"--workdir={os.path.relpath(workdir, REPO)}"),  # relative works too
                # The config file the run started from, without its overrides: the wrong network.
                ("alexnet_jax.evaluate", "--config=configs/digits.py", f"--workdir={workdir}"),
                ("alexnet_jax.predict", f"--workdir={workdir}", str(tmp_path / "zero.png")),
                ("alexnet_jax.retrieval", f"--workdir={workdir}", f"--out={out}", "--queries=0,1"),
            ],
        )

    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert evaluated.stdout.strip() == (
        f"test (center, step 2): top-1 error {100 * summary['eval_top1_error']:.2f}%, "
        f"top-5 error {100 * summary['eval_top5_error']:.2f}% (360 examples)"
    )
    assert refused.returncode == 1 and refused.stdout == ""
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "config.model.activation='relu' but this run was trained with 'tanh'" in last
    assert "config.model.lrn1_before_relu=True" in last and "Traceback" not in refused.stderr
    # Overrides that do not change the network are taken; one that does is refused
    # (in-process: the command line's overrides as config_flags hands them over).
    flag_config = default.get_config()
    read = reading.config_for_reading(workdir, flag_config, {"eval_views": "ten_view"}, config_file_given=False)
    assert read.eval_views == "ten_view" and read.model.activation == "tanh" and read.batch_size == 16
    with pytest.raises(ValueError, match=r"config.model.width=0.25 but this run was trained with 0.125 \("):
        reading.config_for_reading(workdir, flag_config, {"model.width": 0.25}, config_file_given=False)

    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert predicted.stdout.startswith(f"{tmp_path / 'zero.png'}: ") and predicted.stdout.count("\n") == 1

    assert retrieved.returncode == 0, retrieved.stderr[-2000:]
    assert "of 12 neighbours share their query's label" in retrieved.stdout
    assert out.read_bytes().startswith(b"\x89PNG")


def test_params_only_restore_ignores_the_optimiser(tiny_config, tmp_path):
    """Evaluation restores the parameters alone: a plateau run's optimiser
    state (another tree than the piecewise one) never has to match."""

    workdir = str(tmp_path / "plateau")
    config = _short(tiny_config, 2)
    config.optimizer.schedule = "plateau"
    loop.train_and_evaluate(config, workdir)
    piecewise = config.copy_and_resolve_references()
    piecewise.optimizer.schedule = "piecewise"
    _, params, step = predictions.restore_params(piecewise, workdir)
    _, same, _ = predictions.restore_params(config, workdir)
    assert step == 2
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(same)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_field_added_after_a_run_started_counts_as_its_default(tmp_path):
    """A config.json without a newer field: the run had that field's default
    behaviour, so a restart or a reader asking for another value is refused."""
    workdir = str(tmp_path)
    config = default.get_config()
    restart.check_restart(config, workdir, epochs_done=0)
    record = json.loads(open(config_json.path(workdir)).read())
    del record["config"]["model"]["cross_tower"]  # as written before the field existed
    open(config_json.path(workdir), "w").write(json.dumps(record))
    restart.check_restart(config, workdir, epochs_done=1)  # the default: accepted
    changed = config.copy_and_resolve_references()
    changed.model.cross_tower = False
    with pytest.raises(ValueError, match="config.model.cross_tower=False but this run was trained with True"):
        restart.check_restart(changed, workdir, epochs_done=1)
    with pytest.raises(ValueError, match="config.model.cross_tower=False but this run was trained with True"):
        reading.config_for_reading(workdir, config, {"model.cross_tower": False}, config_file_given=False)


def test_a_run_from_before_dropout_scaling_was_trained_with_inverted_dropout(tmp_path):
    """The default became the paper's dropout after runs had used flax's
    inverted one: a config.json without the field reads as "train", so such a
    run is evaluated and resumed with the form it was trained with."""
    assert set(field_rules.BEFORE_FIELD) <= set(field_rules.DEFINING)
    workdir = str(tmp_path)
    config = default.get_config()
    assert config.model.dropout_scaling == "test"
    restart.check_restart(config, workdir, epochs_done=0)
    record = json.loads(open(config_json.path(workdir)).read())
    del record["config"]["model"]["dropout_scaling"]  # as written before the field existed
    open(config_json.path(workdir), "w").write(json.dumps(record))
    assert config_json.saved_config(record).model.dropout_scaling == "train"
    with pytest.raises(ValueError, match="config.model.dropout_scaling='test' but this run was trained with 'train'"):
        restart.check_restart(config, workdir, epochs_done=1)
    inverted = config.copy_and_resolve_references()
    inverted.model.dropout_scaling = "train"
    restart.check_restart(inverted, workdir, epochs_done=1)  # its own form: accepted
    assert reading.config_for_reading(workdir, config, {}, config_file_given=False).model.dropout_scaling == "train"


def test_a_plateau_run_keeps_the_fields_that_steer_its_schedule(tmp_path):
    """Patience counts evaluations of eval_views' error: under the plateau
    schedule a restart may not change them; piecewise runs may."""
    for schedule in ("plateau", "piecewise"):
        workdir = str(tmp_path / schedule)
        config = default.get_config()
        config.optimizer.schedule = schedule
        restart.check_restart(config, workdir, epochs_done=0)  # first start: writes config.json
        for field, value in (("eval_every_steps", 7), ("eval_views", "ten_view")):
            changed = config.copy_and_resolve_references()
            changed[field] = value
            if schedule == "piecewise":
                restart.check_restart(changed, workdir, epochs_done=1)
                restart.check_restart(config, workdir, epochs_done=1)  # and back
                continue
            with pytest.raises(ValueError) as error:
                restart.check_restart(changed, workdir, epochs_done=1)
            message = str(error.value)
            assert message.startswith(f"config.{field}={value!r} but this run was trained with") and "\n" not in message
            assert message.endswith(f"(a plateau run: {field} steers its learning rate)")
        batch = config.copy_and_resolve_references()
        batch.eval_batch_size = 8  # the errors compared are exact whatever the batch
        restart.check_restart(batch, workdir, epochs_done=1)
