"""The raw cache's flat records (alexnet_jax.data.raw_records) and their use
by the tfds pipeline: exact resume, true per-epoch shuffles, the data parts."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax import errors
from alexnet_jax.data import data_cache, multihost, pipeline, raw_records
from alexnet_jax.parallel.sharding import DataPart


def _write(directory, count=50, shape=(6, 5, 3)):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, *shape), np.uint8)
    images[:, 0, 0, 0] = np.arange(count) % 256  # (with the labels) tells the examples apart
    labels = np.arange(count) * 7 % 1000
    assert raw_records.write_records(directory, iter(images), iter(labels.tolist())) == count
    return images, labels


def test_records_round_trip_atomically(tmp_path):
    images, labels = _write(tmp_path / "r")
    assert sorted(os.listdir(tmp_path / "r")) == ["images.u8", "labels.i32", "records.json"]  # no temporaries
    records = raw_records.RawRecords(tmp_path / "r")
    assert records.num_examples == 50 and records.image_shape == (6, 5, 3)
    np.testing.assert_array_equal(records.memmap(), images)
    np.testing.assert_array_equal(records.labels, labels)
    ordered = list(raw_records.ordered_batches(records, 16, workers=2))
    assert [len(b["label"]) for b in ordered] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in ordered]), images)
    # A failed write leaves the folder as it was.
    with pytest.raises(errors.UsageError, match="one shape"):
        raw_records.write_records(tmp_path / "r", [images[0], images[0, :3]], [1, 2])
    assert sorted(os.listdir(tmp_path / "r")) == ["images.u8", "labels.i32", "records.json"]
    assert raw_records.RawRecords(tmp_path / "r").num_examples == 50
    # A truncated file is refused in one line, naming it.
    with open(tmp_path / "r" / "images.u8", "r+b") as f:
        f.truncate(90 * 50 - 1)
    with pytest.raises(errors.RunError, match="images.u8 has 4499 bytes"):
        raw_records.RawRecords(tmp_path / "r")


def test_epochs_are_permutations_and_resume_bit_identically(tmp_path):
    images, labels = _write(tmp_path / "r")
    records = raw_records.RawRecords(tmp_path / "r")
    stream = raw_records.train_batches(records, 8, seed=3)  # 6 batches an epoch, 2 examples wait
    from_start = [next(stream) for _ in range(20)]
    stream.close()
    for epoch in range(3):
        order = raw_records.permutation(50, 3, epoch)
        batches = from_start[epoch * 6 : (epoch + 1) * 6]
        seen = np.concatenate([b["label"] for b in batches])
        assert len(set(seen.tolist())) == 48  # no example twice in an epoch
        np.testing.assert_array_equal(seen, labels[order[:48]])  # consecutive slices of the permutation
        np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]), images[order[:48]])
        assert all(b["image"].dtype == np.uint8 and b["label"].dtype == np.int32 for b in batches)
    assert not np.array_equal(from_start[0]["label"], from_start[6]["label"])
    for epoch, batch in ((0, 0), (0, 5), (1, 0), (1, 3), (0, 13)):  # (0, 13): batch 1 of epoch 2
        for workers in (1, 3):
            resumed = raw_records.train_batches(records, 8, 3, start_epoch=epoch, start_batch=batch, workers=workers)
            for offset in range(4):
                got, want = next(resumed), from_start[epoch * 6 + batch + offset]
                np.testing.assert_array_equal(got["image"], want["image"])
                np.testing.assert_array_equal(got["label"], want["label"])
            resumed.close()
    # Divisible: every example exactly once per epoch.
    whole = raw_records.train_batches(records, 10, seed=0, workers=2)
    epoch0 = np.concatenate([next(whole)["label"] for _ in range(5)])
    assert sorted(epoch0.tolist()) == sorted(labels.tolist())
    with pytest.raises(errors.UsageError, match="make 5 batches of 10"):
        next(raw_records.train_batches(records, 10, seed=0, batches_per_epoch=6))


def test_eval_batches_pad_with_masked_zeros(tmp_path):
    images, labels = _write(tmp_path / "r", count=20)
    records = raw_records.RawRecords(tmp_path / "r")
    batches = list(raw_records.eval_batches(records, 8, 4))
    assert [b["mask"].sum() for b in batches] == [8, 8, 4, 0]
    real = np.concatenate([b["image"] for b in batches])
    np.testing.assert_array_equal(real[:20], images)
    assert not real[20:].any() and not np.concatenate([b["label"] for b in batches])[20:].any()


def test_raw_records_imports_no_tensorflow():
    code = "import sys, alexnet_jax.data.raw_records; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_raw_cache_refuses_a_remote_data_dir():
    with pytest.raises(errors.ConfigError, match="mount the bucket"):
        data_cache.write("gs://bucket/alexnet_cache/train-0of1-8-raw", None, 0, "raw", {})


@pytest.fixture
def raw_config(tiny_config):
    config = tiny_config.copy_and_resolve_references()
    config.cache_format = "raw"
    return config


def test_pipeline_reads_raw_records_as_the_png_cache(raw_config, tiny_config):
    """The raw cache's evaluation equals the png cache's (lossless, same
    order); its training stream resumes at any position; its info and sums
    are written by the same preparation."""
    builder = pipeline.get_builder(tiny_config)
    for raw, png in zip(pipeline.eval_batches(raw_config, builder), pipeline.eval_batches(tiny_config, builder)):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(raw[key], png[key])
    pipeline.ensure_cached(builder, "train", raw_config.resize_size, "raw", DataPart(0, 1))
    path, info = pipeline.cached_part(builder, "train", raw_config.resize_size, "raw", DataPart(0, 1))
    assert info["records"] == "flat" and info["num_examples"] == 1437 and data_cache.read_sums(path).count == 1437
    steps = pipeline.steps_per_epoch(raw_config, builder)
    stream = pipeline.train_batches(raw_config, builder)
    from_start = [next(stream) for _ in range(steps + 2)]
    resumed = pipeline.train_batches(raw_config, builder, pipeline.StreamPosition.at_step(steps - 1, steps))
    for offset in range(3):
        np.testing.assert_array_equal(next(resumed)["image"], from_start[steps - 1 + offset]["image"])
    # A raw cache of the former layout (serialized tensors in TFRecords) is refused in one line.
    info_file = os.path.join(path, data_cache.INFO_FILE)
    good = open(info_file).read()
    try:
        with open(info_file, "w") as f:
            json.dump({k: v for k, v in json.loads(good).items() if k != "records"}, f)
        with pytest.raises(data_cache.CacheMismatchError, match="records=None"):
            next(pipeline.train_batches(raw_config, builder))
    finally:
        with open(info_file, "w") as f:
            f.write(good)


def test_raw_data_parts_are_the_processes_parts(raw_config, monkeypatch):
    """Each data part reads its own half of the split, as the TFRecord caches do."""
    builder = pipeline.get_builder(raw_config)
    raw_config.batch_size = 32  # 16 per part
    seen = []
    for index in (0, 1):
        monkeypatch.setattr(multihost, "config_data_part", lambda config, index=index: DataPart(index, 2))
        batches = list(pipeline.eval_batches(raw_config, builder))
        seen += [image.tobytes() for batch in batches for image in batch["image"][batch["mask"] == 1]]
        stream = pipeline.train_batches(raw_config, builder)
        trained = {image.tobytes() for _ in range(3) for image in next(stream)["image"]}
        path, _ = pipeline.cached_part(builder, "train", raw_config.resize_size, "raw", DataPart(index, 2))
        part = raw_records.RawRecords(path)
        assert part.num_examples in (718, 719)
        assert trained <= {image.tobytes() for image in part.memmap()}
    monkeypatch.undo()
    everything = np.concatenate([b["image"][b["mask"] == 1] for b in pipeline.eval_batches(raw_config, builder)])
    assert sorted(seen) == sorted(image.tobytes() for image in everything)
