"""The tfds input: exact evaluation, per-data-part reading, a resumable stream."""

import hashlib
import json
import os
import time

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax.data import data_cache, multihost, pipeline, tf_iteration
from alexnet_jax.parallel import sharding
from alexnet_jax.parallel.sharding import DataPart


@pytest.fixture
def builder(tiny_config):
    return pipeline.get_builder(tiny_config)


def _fingerprints(images: np.ndarray) -> list[str]:
    return [hashlib.sha1(image.tobytes()).hexdigest() for image in images]


def test_eval_counts_every_example_once(tiny_config, builder):
    tiny_config.eval_batch_size = 64  # 360 test digits: 5 full batches and one of 40
    batches = list(pipeline.eval_batches(tiny_config, builder))
    assert len(batches) == 6 and all(b["image"].shape[0] == 64 for b in batches)
    masks = np.concatenate([b["mask"] for b in batches])
    assert masks.sum() == 360 and masks[:360].all() and not masks[360:].any()
    real = np.concatenate([b["image"] for b in batches])[:360]
    assert len(set(_fingerprints(real))) > 350  # distinct digits, not repeats


def test_every_iterator_runs_without_tf_data_autotuning(tiny_config, builder, monkeypatch, tmp_path):
    """Autotuning's model thread can make an iterator's destruction sleep out
    its timer (alexnet_jax.data.tf_iteration): the training stream, every
    evaluation, the statistics' pass and a cache being written all run with
    it off, and still read what they should."""
    autotuned, as_numpy = [], tf_iteration.tfds.as_numpy
    monkeypatch.setattr(
        tf_iteration.tfds, "as_numpy", lambda ds: autotuned.append(ds.options().autotune.enabled) or as_numpy(ds)
    )
    assert next(pipeline.train_batches(tiny_config, builder))["image"].shape[0] == tiny_config.batch_size
    assert sum(b["mask"].sum() for b in pipeline.eval_batches(tiny_config, builder)) == 360
    assert sum(len(b) for b in pipeline.full_split_batches(builder, "test", 16, batch_size=100)) == 360
    source = pipeline._tfds_source(builder, "test", 16)
    data_cache.write(str(tmp_path / "cache"), pipeline._decoded(source), 360, "raw", {})
    assert len(autotuned) >= 4 and not any(autotuned)  # (and the caches the first reads wrote)


def test_numpy_iterator_yields_what_tf_data_yields():
    ds = tf.data.Dataset.range(10).map(lambda i: {"x": i * i, "y": tf.fill([2], i)})
    ours = list(tf_iteration.numpy_iterator(ds, prefetch=3))
    theirs = list(ds.as_numpy_iterator())
    assert len(ours) == 10 and all(a["x"] == b["x"] and (a["y"] == b["y"]).all() for a, b in zip(ours, theirs))
    assert tf_iteration.parallel_calls() == len(os.sched_getaffinity(0))


def test_two_data_parts_are_disjoint_complete_halves(tiny_config, builder, monkeypatch):
    seen = []
    for index in (0, 1):
        monkeypatch.setattr(multihost, "config_data_part", lambda config, index=index: DataPart(index, 2))
        batches = list(pipeline.eval_batches(tiny_config, builder))
        images = np.concatenate([b["image"][b["mask"] == 1] for b in batches])
        seen.append(_fingerprints(images))
    monkeypatch.undo()
    everything = np.concatenate([b["image"][b["mask"] == 1] for b in pipeline.eval_batches(tiny_config, builder)])
    assert len(seen[0]) == len(seen[1]) == 180
    assert sorted(seen[0] + seen[1]) == sorted(_fingerprints(everything))


def _stream(config, builder, position=None, count=1):
    position = position or pipeline.StreamPosition()
    batches = pipeline.train_batches(config, builder, position)
    return [next(batches) for _ in range(count)]


def test_resumed_stream_continues_across_an_epoch_boundary(tiny_config, builder):
    steps = pipeline.steps_per_epoch(tiny_config, builder)
    assert steps == 1437 // 16 == 89
    from_start = _stream(tiny_config, builder, count=steps + 3)
    resumed = _stream(tiny_config, builder, pipeline.StreamPosition.at_step(steps - 2, steps), count=5)
    for offset, batch in enumerate(resumed):
        np.testing.assert_array_equal(batch["image"], from_start[steps - 2 + offset]["image"])
        np.testing.assert_array_equal(batch["label"], from_start[steps - 2 + offset]["label"])
    # Every epoch is a fresh shuffle of the part, without repeats inside it.
    epoch0 = _fingerprints(np.concatenate([b["image"] for b in from_start[:steps]]))
    assert len(set(epoch0)) > 1400
    assert not np.array_equal(from_start[0]["image"], from_start[steps]["image"])


def test_resume_skips_the_consumed_examples_before_decoding(tiny_config, builder, monkeypatch):
    """Resuming 80 batches into epoch 1 decodes a few batches, not 1,280 images."""
    decoded = []
    original = data_cache.decode

    def counting_decode(fmt, size):
        decode = original(fmt, size)

        def fn(example):
            tf.py_function(lambda: decoded.append(1) or 0, [], tf.int32)
            return decode(example)

        return fn

    monkeypatch.setattr(data_cache, "decode", counting_decode)
    position = pipeline.StreamPosition(epoch=1, batch=80)
    batch = _stream(tiny_config, builder, position)[0]
    time.sleep(1.0)  # let the prefetching settle
    assert 16 <= len(decoded) < 640, len(decoded)
    monkeypatch.undo()
    expected = _stream(tiny_config, builder, count=89 + 81)[-1]
    np.testing.assert_array_equal(batch["image"], expected["image"])


def _in_order(config, builder, split="train"):
    """Every image of `split` in the source's fixed order (no shuffling)."""
    batches = pipeline.full_split_batches(
        builder, split, config.resize_size, batch_size=512, cache_format=config.cache_format
    )
    return np.concatenate(list(batches))


def test_png_and_raw_caches_are_lossless_and_jpeg_close(tiny_config, builder):
    uncached = tiny_config.copy_and_resolve_references()
    uncached.cache_format = "none"
    reference = _in_order(uncached, builder)
    assert reference.shape == (1437, 72, 72, 3)
    np.testing.assert_array_equal(_in_order(tiny_config, builder), reference)  # png
    raw = tiny_config.copy_and_resolve_references()
    raw.cache_format = "raw"
    np.testing.assert_array_equal(_in_order(raw, builder), reference)
    jpeg = tiny_config.copy_and_resolve_references()
    jpeg.cache_format = "jpeg"
    error = np.abs(_in_order(jpeg, builder).astype(np.int32) - reference).mean()
    assert error < 2.0, error  # quality 95: about a grey level on average
    eval_cached = list(pipeline.eval_batches(tiny_config, builder))
    eval_plain = list(pipeline.eval_batches(uncached, builder))
    for a, b in zip(eval_cached, eval_plain, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def _cache_path(config, builder):
    return data_cache.cache_dir(
        str(builder.data_dir), config.train_split, config.resize_size, config.cache_format, 0, 1
    )


def test_killed_preparation_leaves_no_trusted_cache(tiny_config, builder, monkeypatch, capsys):
    config = tiny_config.copy_and_resolve_references()
    config.resize_size = 66  # a cache of its own
    config.model.input_size = 64
    path = _cache_path(config, builder)
    assert not os.path.exists(path)
    written = []

    def dying_extend(shards, records, labels):
        if len(written) >= 500:
            raise KeyboardInterrupt  # stands for a kill in the middle of the preparation
        written.extend(labels)
        return original(shards, records, labels)

    original = data_cache._Shards.extend
    monkeypatch.setattr(data_cache._Shards, "extend", dying_extend)
    with pytest.raises(KeyboardInterrupt):
        _stream(config, builder)
    assert not os.path.exists(path)
    # A kill -9 would leave its temporary folder: later runs ignore it.
    os.makedirs(f"{path}.tmp-otherhost-1")
    monkeypatch.undo()
    cached = _stream(config, builder)[0]
    assert "caching" in capsys.readouterr().err  # the progress bar
    info = data_cache.read_info(path)
    assert info["num_examples"] == 1437 and info["num_shards"] == 2
    del cached
    uncached = config.copy_and_resolve_references()
    uncached.cache_format = "none"
    np.testing.assert_array_equal(_in_order(config, builder), _in_order(uncached, builder))

    # Made once: a second reader never writes.
    monkeypatch.setattr(data_cache, "write", lambda *args: pytest.fail("rewrote an existing cache"))
    _stream(config, builder)


def test_cache_of_other_data_is_refused_with_one_line(tiny_config, builder):
    _stream(tiny_config, builder)  # makes the cache if this test runs alone
    path = _cache_path(tiny_config, builder)
    info_file = os.path.join(path, data_cache.INFO_FILE)
    with open(info_file) as f:
        good = f.read()
    try:
        with open(info_file, "w") as f:
            json.dump({**json.loads(good), "num_examples": 99}, f)
        with pytest.raises(data_cache.CacheMismatchError) as error:
            _stream(tiny_config, builder)
        assert "num_examples=99" in str(error.value) and path in str(error.value)
        assert "\n" not in str(error.value)
    finally:
        with open(info_file, "w") as f:
            f.write(good)


def test_prefetch_to_device_runs_two_batches_ahead(tiny_config):
    mesh = sharding.make_mesh((-1, 1))
    pulled = []

    def host_batches():
        for index in range(5):
            pulled.append(index)
            yield {"image": np.full((8, 2), index, np.uint8)}

    batches = sharding.prefetch_to_device(host_batches(), mesh, size=2)
    first = next(batches)
    assert pulled == [0, 1] and first["image"].sharding == sharding.batch_sharding(mesh)
    rest = list(batches)
    assert [int(b["image"][0, 0]) for b in [first, *rest]] == [0, 1, 2, 3, 4]


def test_resume_checks_the_data_parts_and_reads_older_positions(tiny_config):
    """A position names examples of its data parts; positions saved before
    `data_parts` was recorded had one part per process."""
    record = pipeline.position_record(tiny_config, pipeline.StreamPosition(0, 5), 5, 89)
    assert record["data_parts"] == 1 and record["local_batch_size"] == 16
    older = {k: v for k, v in record.items() if k != "data_parts"}
    assert pipeline.resume_position(tiny_config, older, 5, 89) == pipeline.StreamPosition(0, 5)
    for saved in ({**older, "process_count": 2}, {**record, "data_parts": 2}):
        with pytest.raises(ValueError, match=r"data_parts=2 but the number of data parts .* is now 1"):
            pipeline.resume_position(tiny_config, saved, 5, 89)
