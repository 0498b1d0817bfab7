"""Using a trained model: predict (top-5 of image files) and fc7 retrieval."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import retrieval
from alexnet_jax.data import data_stats, pipeline
from alexnet_jax.inference import predictions
from alexnet_jax.runs import run_stats
from alexnet_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(config, workdir):
    short = config.copy_and_resolve_references()
    short.num_train_steps = 2
    short.eval_every_steps = 2
    loop.train_and_evaluate(short, workdir)
    return short


def _digit_png(path, invert=False):
    from sklearn.datasets import load_digits

    scan = np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)  # a 0, white on black
    Image.fromarray(255 - scan if invert else scan).resize((40, 40)).save(path)


def _files(folder) -> list[str]:
    """Every file and folder under `folder`, relative to it."""
    return sorted(
        os.path.relpath(os.path.join(root, name), folder)
        for root, dirs, files in os.walk(folder)
        for name in dirs + files
    )


def _fresh_digits(digits_data_dir, dest) -> str:
    """A copy of the prepared digits without any cache or statistics file."""
    shutil.copytree(digits_data_dir, dest, ignore=shutil.ignore_patterns("alexnet_cache", "alexnet_stats_*"))
    return str(dest)


def test_restore_predict_embed_retrieve_and_the_predict_command(tiny_config, tmp_path):
    workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match="no finished checkpoint in .*: train first"):
        predictions.restore_params(tiny_config, workdir)
    config = _train(tiny_config, workdir)
    model, params, step = predictions.restore_params(config, workdir)
    assert step == 2

    _digit_png(tmp_path / "zero.png")
    (tmp_path / "notes.txt").write_text("not an image")
    image = predictions.load_image(str(tmp_path / "zero.png"), config.resize_size)
    assert image.shape == (72, 72, 3) and image.dtype == np.uint8
    with pytest.raises(ValueError, match=r"notes.txt: not an image PIL can read"):
        predictions.load_image(str(tmp_path / "notes.txt"), config.resize_size)
    run = run_stats.for_reading(config, workdir)  # the statistics the run trained with, from its workdir
    assert run.saved and run.source["data_stats"] == "computed" and run.source["split"] == "train"
    stats = data_stats.load_or_compute(config, pipeline.get_builder(config))
    np.testing.assert_array_equal(run.stats.mean, stats.mean)
    probs = predictions.probabilities(model, params, np.stack([image, image]), config, stats)
    assert probs.shape == (2, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    ids = predictions.top_k(probs)
    assert ids.shape == (2, 5) and np.all(np.diff(np.take_along_axis(probs, ids, axis=1), axis=1) <= 0)
    assert len(set(ids[0].tolist())) == 5 and run.class_names == tuple(str(d) for d in range(10))

    builder = pipeline.get_builder(config)
    features, labels = retrieval.embed(model, params, stats, config, builder, "test", limit=70)
    assert features.shape == (70, 512) and labels.shape == (70,)  # fc7 of width 1/8: 4096 / 8
    assert np.all(features >= 0)  # after the ReLU
    database, _ = retrieval.embed(model, params, stats, config, builder, "test")
    assert len(database) == 360  # the padding of the last batch is dropped
    np.testing.assert_allclose(database[:70], features, rtol=1e-5, atol=1e-5)

    queries = database[[3, 10]]
    order, distances = retrieval.nearest(queries, database, k=4, exclude=np.array([3, 10]))
    brute = np.linalg.norm(queries[:, None] - database[None], axis=-1)
    brute[[0, 1], [3, 10]] = np.inf
    np.testing.assert_array_equal(order, np.argsort(brute, axis=1, kind="stable")[:, :4])
    np.testing.assert_allclose(distances, np.sort(brute, axis=1)[:, :4], rtol=1e-4)

    images = retrieval.images_at(config, builder, "test", [3, 10, 200])
    assert sorted(images) == [3, 10, 200] and images[3].shape == (64, 64, 3)
    grid = retrieval.retrieval_grid([images[3], images[10]], [[images[200]] * 4] * 2)
    assert grid.shape == (2 + 2 * 66, 68 + 8 + 2 + 4 * 66, 3) and grid.dtype == np.uint8

    # The command line: one line per image, a one-line message for a non-image, exit status 1;
    # the workdir is all it reads: nothing is prepared, cached or computed in any data_dir.
    _digit_png(tmp_path / "inverted.png", invert=True)
    no_data, no_tfds = tmp_path / "no_data", tmp_path / "no_tfds"
    no_data.mkdir(), no_tfds.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alexnet_jax.predict",
            f"--workdir={workdir}",  # the run's config.json says the rest
            f"--config.data_dir={no_data}",
            str(tmp_path / "zero.png"),
            str(tmp_path / "notes.txt"),
            str(tmp_path / "inverted.png"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TFDS_DATA_DIR": str(no_tfds)},
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert _files(no_data) == [] and _files(no_tfds) == []
    prediction, inverted = result.stdout.splitlines()  # stdout: one line per readable file, nothing else
    assert prediction.startswith(f"{tmp_path / 'zero.png'}: ") and inverted.startswith(f"{tmp_path / 'inverted.png'}: ")
    assert len(prediction.split(" | ")) == 5 and prediction.endswith("%")
    assert f"error: {tmp_path / 'notes.txt'}: not an image PIL can read (JPEG, PNG, ...)" in result.stderr
    assert "Traceback" not in result.stderr
    # A black-on-white digit is said to be the opposite of the training images; the white-on-black one is not.
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and notes[0].startswith(f"note: {tmp_path / 'inverted.png'}: mostly light (mean ")
    assert "the run's training images are mostly dark" in notes[0] and "invert the image" in notes[0]


def test_evaluate_a_checkpoint_centre_and_ten_view(tiny_config, tmp_path, digits_data_dir):
    from alexnet_jax import evaluate

    workdir = str(tmp_path / "run")
    config = _train(tiny_config, workdir)
    summary = loop.train_and_evaluate(config, workdir)  # resumed a finished run: evaluates the restored state
    centre, step = evaluate.evaluate_checkpoint(config, workdir)
    assert step == 2 and centre["eval_num_examples"] == 360
    assert centre["eval_top1_error"] == pytest.approx(summary["eval_top1_error"])  # the training loop's evaluation
    config.eval_views = "ten_view"
    ten, _ = evaluate.evaluate_checkpoint(config, workdir)
    assert ten["eval_num_examples"] == 360 and ten["eval_loss"] != pytest.approx(centre["eval_loss"])
    config.eval_split = "validation"
    with pytest.raises(ValueError, match=r"config.eval_split='validation' is not a split of sklearn_digits"):
        evaluate.evaluate_checkpoint(config, workdir)

    # On the prepared dataset alone evaluate caches its split, nothing of the training split's.
    data_dir, no_tfds = _fresh_digits(digits_data_dir, tmp_path / "data"), tmp_path / "no_tfds"
    before = _files(data_dir)
    no_tfds.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alexnet_jax.evaluate",
            f"--workdir={workdir}",  # the run's config.json says the rest
            f"--config.data_dir={data_dir}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TFDS_DATA_DIR": str(no_tfds)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    created = sorted(set(_files(data_dir)) - set(before))
    cache = os.path.join("sklearn_digits", "1.0.0", "alexnet_cache")
    assert created[:2] == [cache, os.path.join(cache, "test-0of1-72-png")], created
    assert all(name.startswith(os.path.join(cache, "test-0of1-72-png")) for name in created[1:]), created
    assert _files(no_tfds) == []
    expected = f"test (center, step 2): top-1 error {100 * centre['eval_top1_error']:.2f}%"
    assert expected in result.stdout and "(360 examples)" in result.stdout
