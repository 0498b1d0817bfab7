"""The training-set statistics from the sums the preprocessed cache keeps:
the same numbers as NumPy over the images, combined over data parts, and
no pass over the images when the sums are there."""

import logging

import numpy as np
import pytest
import tensorflow as tf
from etils import epath

from alexnet_jax.data import data_cache, data_stats, multihost, pipeline
from alexnet_jax.parallel.sharding import DataPart


def _numpy_stats(images_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean image and 3x3 RGB covariance (over every pixel of every image), by NumPy alone."""
    images = images_uint8.astype(np.float64)
    return images.mean(0), np.cov(images.reshape(-1, 3), rowvar=False, bias=True)


def _covariance(stats) -> np.ndarray:
    eigvecs, sqrt_eigvals = np.asarray(stats["eigvecs"], np.float64), np.asarray(stats["sqrt_eigvals"], np.float64)
    return eigvecs @ np.diag(sqrt_eigvals**2) @ eigvecs.T


def test_cache_sums_of_colour_images_give_numpys_statistics(tmp_path):
    """Written by data_cache.write (not a multiple of its accumulation batch),
    in two parts merged, and through `compute`: all NumPy's mean and covariance."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (150, 12, 12, 3), np.uint8)
    images[..., 2] = images[..., 0] // 2 + rng.integers(0, 100, (150, 12, 12), np.uint8)  # correlated channels
    labels = np.arange(150) % 10

    def write(part, selection):
        path = str(tmp_path / f"part{part}")
        decoded = tf.data.Dataset.from_tensor_slices({"image": images[selection], "label": labels[selection]})
        data_cache.write(path, decoded, len(images[selection]), "png", {"part": part})
        return data_cache.read_sums(path)

    whole = write(0, slice(None))
    assert whole.count == 150 and not list(tmp_path.glob("*.tmp-*"))
    halves = data_cache.ImageSums()
    halves.merge(write(1, slice(0, 70)))
    halves.merge(write(2, slice(70, None)))
    # Exact integer sums: the same bits however the images were grouped.
    np.testing.assert_array_equal(halves.image_sum, whole.image_sum)
    np.testing.assert_array_equal(halves.outer_sum, whole.outer_sum)
    np.testing.assert_array_equal(whole.pixel_sum, images.reshape(-1, 3).sum(0, dtype=np.int64))

    mean_image, covariance = _numpy_stats(images)
    for stats in (data_stats.finish(whole), data_stats.compute([images[:64], images[64:]], 150)):
        np.testing.assert_allclose(stats["mean_image"], mean_image, rtol=1e-6)
        np.testing.assert_allclose(stats["mean_rgb"], mean_image.reshape(-1, 3).mean(0), rtol=1e-6)
        np.testing.assert_allclose(_covariance(stats), covariance, rtol=1e-5, atol=1e-3)


@pytest.fixture
def config(tiny_config):
    """Digits at a small size of their own (a cache and statistics file no other test makes)."""
    config = tiny_config.copy_and_resolve_references()
    config.cache_format = "png"  # lossless: the cached images are the resized ones
    config.resize_size = 14
    return config


def _no_image_reads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("read the images again")

    monkeypatch.setattr(pipeline, "full_split_batches", refuse)
    monkeypatch.setattr(data_cache, "records", refuse)


def test_statistics_come_from_the_cache_sums_without_a_pass(config, monkeypatch, caplog):
    builder = pipeline.get_builder(config)
    uncached = list(pipeline.full_split_batches(builder, "train", config.resize_size, 512, "none"))
    mean_image, covariance = _numpy_stats(np.concatenate(uncached))

    pipeline.prepare(config, builder)  # as train does: the caches, then the statistics
    _no_image_reads(monkeypatch)
    with caplog.at_level(logging.INFO):
        stats = data_stats.load_or_compute(config, builder)
    assert "from the preprocessed cache's image sums (no pass)" in caplog.text
    np.testing.assert_allclose(np.asarray(stats.mean), mean_image, rtol=1e-6, atol=1e-4)
    with epath.Path(data_stats.cache_path(config, builder)).open("rb") as f, np.load(f) as cached:
        np.testing.assert_allclose(_covariance(cached), covariance, rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(cached["mean_image"], np.asarray(stats.mean))
    config.mean_image = False
    np.testing.assert_allclose(data_stats.load_or_compute(config, builder).mean, mean_image.mean((0, 1)), rtol=1e-6)


def test_two_data_parts_combine_to_the_one_part_sums(config, monkeypatch):
    config.resize_size = 15
    builder = pipeline.get_builder(config)
    one_part, _ = data_stats.cached_sums(config, builder)  # writes the one-part cache
    for index in (1, 0):  # each part's process prepares its own; process 0 last
        monkeypatch.setattr(multihost, "config_data_part", lambda config, index=index: DataPart(index, 2))
        pipeline.prepare(config, builder)
    _no_image_reads(monkeypatch)
    two_parts, why_not = data_stats.cached_sums(config, builder)
    assert why_not == "" and two_parts.count == one_part.count == 1437
    np.testing.assert_array_equal(two_parts.image_sum, one_part.image_sum)
    np.testing.assert_array_equal(two_parts.outer_sum, one_part.outer_sum)
    stats = data_stats.load_or_compute(config, builder)
    np.testing.assert_array_equal(np.asarray(stats.mean), data_stats.finish(one_part)["mean_image"])


def test_a_cache_without_sums_falls_back_to_one_pass(config, monkeypatch, caplog):
    config.resize_size = 13
    builder = pipeline.get_builder(config)
    pipeline.prepare(config, builder)
    path, _ = pipeline.cached_part(builder, "train", 13, "png", DataPart(0, 1))
    from_sums = data_stats.finish(data_stats.cached_sums(config, builder)[0])
    (epath.Path(path) / data_cache.SUMS_FILE).unlink()  # as a cache written before the sums were kept
    passes = []
    original = pipeline.full_split_batches
    monkeypatch.setattr(pipeline, "full_split_batches", lambda *a, **k: passes.append(1) or original(*a, **k))
    with caplog.at_level(logging.INFO):
        stats = data_stats.load_or_compute(config, builder)
    assert passes == [1] and "no image sums (written before they were kept)" in caplog.text
    np.testing.assert_allclose(np.asarray(stats.mean), from_sums["mean_image"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(stats.sqrt_eigvals), from_sums["sqrt_eigvals"], rtol=1e-4, atol=1e-3)

    config.cache_format = "none"
    assert data_stats.cached_sums(config, builder) == (None, 'cache_format is "none"')
