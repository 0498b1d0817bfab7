"""The run's own data statistics (<workdir>/data_stats.npz): written at the
first start, used by a restart and the readers whatever the data_dir's
statistics file holds later; a workdir from before it gets it once."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from alexnet_jax.data import augment, data_stats
from alexnet_jax.files import paths
from alexnet_jax.inference import ensemble, predictions
from alexnet_jax.runs import run_stats
from alexnet_jax.train import loop, steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def config(tiny_config, tmp_path, monkeypatch):
    """Two steps; the data_dir's statistics file is one of this test's own (it is changed here)."""
    config = tiny_config.copy_and_resolve_references()
    config.num_train_steps = 2
    config.eval_every_steps = 2
    monkeypatch.setattr(data_stats, "cache_path", lambda config, builder: str(tmp_path / "alexnet_stats.npz"))
    return config


def _missing_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"has no {run_stats.FILE}" in r.getMessage()]


def test_a_restart_and_the_readers_use_the_runs_own_statistics(config, tmp_path, monkeypatch, caplog):
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(config, workdir)
    shared = data_stats.cache_path(config, None)
    computed = paths.read_npz(shared)
    run = run_stats.load(workdir)
    np.testing.assert_array_equal(run.stats.mean, computed["mean_image"])
    np.testing.assert_array_equal(run.stats.sqrt_eigvals, computed["sqrt_eigvals"])
    assert run.source == {
        "data_stats": "computed",
        "dataset": "sklearn_digits",
        "split": "train",
        "resize_size": 72,
        "cache_format": "png",
        "mean_image": True,
        "file": shared,
    }
    assert run.class_names == tuple(str(d) for d in range(10))
    first = ensemble.evaluate_member(config, workdir)

    # The data_dir's statistics change (an image folder prepared afresh, another run's file copied in):
    paths.write_npz(shared, **{**computed, "mean_image": computed["mean_image"] + 40})
    np.testing.assert_array_equal(ensemble.evaluate_member(config, workdir).probs, first.probs)
    used = []
    make_eval_fn = steps.make_eval_fn
    monkeypatch.setattr(steps, "make_eval_fn", lambda *args: used.append(args[-1]) or make_eval_fn(*args))
    config.num_train_steps = 3
    loop.train_and_evaluate(config, workdir)
    np.testing.assert_array_equal(used[0].mean, computed["mean_image"])  # the run's own, not the file's now

    # A workdir from before the file: the statistics as before (the data_dir's), one warning, then saved.
    os.remove(run_stats.path(workdir))
    with caplog.at_level(logging.WARNING):
        again = run_stats.for_reading(config, workdir)
        np.testing.assert_array_equal(again.stats.mean, computed["mean_image"] + 40)
        np.testing.assert_array_equal(run_stats.load(workdir).stats.mean, again.stats.mean)
        assert run_stats.for_reading(config, workdir).saved
    assert len(_missing_warnings(caplog)) == 1

    # Without the file, predict needs the dataset: unavailable (no internet, say), one line.
    os.remove(run_stats.path(workdir))
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    code = (
        "from absl import app\n"
        "from alexnet_jax import predict\n"
        "from alexnet_jax.data import pipeline\n"
        "from alexnet_jax.runs import overrides, reading\n"
        "def unavailable(config):\n"
        "    raise pipeline.DatasetUnavailableError(f'{config.dataset} cannot be prepared here')\n"
        "pipeline.get_builder = unavailable\n"
        "reading.define_flags(several_workdirs=True)\n"
        "app.run(predict.main, flags_parser=overrides.parse_flags)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, f"--workdir={workdir}", str(image)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == "error: sklearn_digits cannot be prepared here"
    assert "Traceback" not in result.stderr


def test_the_file_round_trips_and_another_runs_file_is_refused(tiny_config, tmp_path):
    config = tiny_config.copy_and_resolve_references()
    config.data_stats = "published"
    source = {"data_stats": "published", "mean_rgb": list(config.mean_rgb)}
    run_stats.save(tmp_path, run_stats.RunStats(augment.published_stats(config.mean_rgb), source, ("a", "b")))
    assert sorted(os.listdir(tmp_path)) == [run_stats.FILE]  # no temporary file left
    loaded = run_stats.for_reading(config, tmp_path)
    assert loaded.saved and loaded.source == source and loaded.class_names == ("a", "b")
    np.testing.assert_allclose(loaded.stats.eigvecs, augment.PUBLISHED_EIGVECS)
    config.data_stats, config.mean_image = "computed", True  # a per-pixel mean's run: not this file
    with pytest.raises(ValueError, match=r"holds a mean of shape \(3,\) but this run .* one of shape \(72, 72, 3\)"):
        run_stats.for_reading(config, tmp_path)


def test_the_polarity_note():
    dark = augment.DataStats(np.full((4, 4, 3), 78.0), np.eye(3), np.ones(3))  # the digits' mean: white on black
    light_image, dark_image = np.full((9, 9, 3), 220, np.uint8), np.full((9, 9, 3), 60, np.uint8)
    note = predictions.polarity_note(light_image, dark)
    assert note.startswith("mostly light (mean 220 of 255) but the run's training images are mostly dark (mean 78)")
    assert predictions.polarity_note(dark_image, dark) is None
    photos = augment.published_stats((123.7, 116.3, 103.5))  # near mid-grey: never a note
    assert predictions.polarity_note(light_image, photos) is None
    assert predictions.polarity_note(dark_image, photos) is None
    assert "mostly dark" in predictions.polarity_note(dark_image, augment.DataStats(np.full(3, 200.0), None, None))
