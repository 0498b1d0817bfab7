"""The tfds input: exact evaluation, per-process parts, a resumable stream."""

import hashlib

import jax
import numpy as np
import pytest

from alexnet_jax import input_pipeline


@pytest.fixture
def builder(tiny_config):
    return input_pipeline.get_builder(tiny_config)


def _fingerprints(images: np.ndarray) -> list[str]:
    return [hashlib.sha1(image.tobytes()).hexdigest() for image in images]


def test_eval_counts_every_example_once(tiny_config, builder):
    tiny_config.eval_batch_size = 64  # 360 test digits: 5 full batches and one of 40
    batches = list(input_pipeline.eval_batches(tiny_config, builder))
    assert len(batches) == 6 and all(b["image"].shape[0] == 64 for b in batches)
    masks = np.concatenate([b["mask"] for b in batches])
    assert masks.sum() == 360 and masks[:360].all() and not masks[360:].any()
    real = np.concatenate([b["image"] for b in batches])[:360]
    assert len(set(_fingerprints(real))) > 350  # distinct digits, not repeats


def test_two_processes_read_disjoint_complete_halves(tiny_config, builder, monkeypatch):
    seen = []
    for index in (0, 1):
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        batches = list(input_pipeline.eval_batches(tiny_config, builder))
        images = np.concatenate([b["image"][b["mask"] == 1] for b in batches])
        seen.append(_fingerprints(images))
    monkeypatch.undo()
    everything = np.concatenate([b["image"][b["mask"] == 1] for b in input_pipeline.eval_batches(tiny_config, builder)])
    assert len(seen[0]) == len(seen[1]) == 180
    assert sorted(seen[0] + seen[1]) == sorted(_fingerprints(everything))


def test_resumed_stream_continues_where_it_stopped(tiny_config, builder):
    from_start = input_pipeline.train_batches(tiny_config, builder)
    first_five = [next(from_start) for _ in range(5)]
    resumed = next(input_pipeline.train_batches(tiny_config, builder, start_step=3))
    np.testing.assert_array_equal(resumed["image"], first_five[3]["image"])
    np.testing.assert_array_equal(resumed["label"], first_five[3]["label"])
    assert not np.array_equal(first_five[0]["image"], first_five[1]["image"])
