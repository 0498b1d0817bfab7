"""On-device augmentation and evaluation views, on known pixels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.data import augment, data_stats
from alexnet_jax.train import inspection, steps


def _coordinate_images(batch: int, size: int) -> jnp.ndarray:
    """Channel 0 = row, channel 1 = column, channel 2 = image index."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    images = np.stack([np.stack([rows, cols, np.full_like(rows, b)], -1) for b in range(batch)])
    return jnp.asarray(images, jnp.float32)


def _offsets_and_flips(crops: np.ndarray):
    """Recovers (top, left, flipped) of each crop from its coordinate pixels."""
    result = []
    for crop in crops:
        top = int(crop[0, 0, 0])
        flipped = crop[0, 0, 1] > crop[0, -1, 1]
        left = int(crop[0, -1, 1]) if flipped else int(crop[0, 0, 1])
        result.append((top, left, bool(flipped)))
    return result


def test_random_crop_flip_bounds_and_content():
    size, crop = 12, 8
    images = _coordinate_images(64, size)
    crops = np.asarray(augment.random_crop_flip(images, jax.random.key(0), crop, flip=True))
    assert crops.shape == (64, crop, crop, 3)
    found = _offsets_and_flips(crops)
    for b, (top, left, flipped) in enumerate(found):
        assert 0 <= top <= size - crop and 0 <= left <= size - crop
        want = np.asarray(images[b, top : top + crop, left : left + crop])
        np.testing.assert_array_equal(crops[b], want[:, ::-1] if flipped else want)
    flips = [f for _, _, f in found]
    assert 10 < sum(flips) < 54  # both happen, about half each
    assert len({(top, left) for top, left, _ in found}) > 10  # offsets differ per image


def test_chunked_crops_share_offset_and_flip():
    images = _coordinate_images(64, 12)
    crops = np.asarray(augment.random_crop_flip(images, jax.random.key(1), 8, flip=True, chunk=32))
    found = _offsets_and_flips(crops)
    assert len(set(found[:32])) == 1 and len(set(found[32:])) == 1


def test_no_flip_never_flips():
    crops = np.asarray(augment.random_crop_flip(_coordinate_images(32, 10), jax.random.key(2), 6, flip=False))
    assert not any(f for _, _, f in _offsets_and_flips(crops))


def test_pca_noise_statistics():
    stats = augment.published_stats((0.0, 0.0, 0.0))
    offsets = np.asarray(augment.pca_colour_offsets(jax.random.key(3), 200_000, stats, 0.1), np.float64)
    eigvecs, sqrt_eigvals = np.asarray(stats.eigvecs, np.float64), np.asarray(stats.sqrt_eigvals, np.float64)
    want = eigvecs @ np.diag(0.01 * sqrt_eigvals**2) @ eigvecs.T
    np.testing.assert_allclose(offsets.mean(0), 0.0, atol=0.1)  # std of the mean ~ 12.2 / 447
    np.testing.assert_allclose(np.cov(offsets.T), want, rtol=0.02, atol=0.5)


def test_train_inputs_subtract_mean_image_then_crop():
    images = jnp.asarray(np.random.RandomState(0).randint(0, 256, (4, 10, 10, 3)), jnp.uint8)
    mean = jnp.asarray(np.random.RandomState(1).uniform(0, 255, (10, 10, 3)), jnp.float32)
    stats = augment.DataStats(mean=mean, eigvecs=jnp.eye(3), sqrt_eigvals=jnp.ones(3))
    got = augment.train_inputs(images, jax.random.key(4), stats, crop=10, flip=False, pca_std=0.0)
    np.testing.assert_allclose(got, images.astype(jnp.float32) - mean)


def test_ten_views_match_hand_built_crops():
    images = np.asarray(_coordinate_images(2, 10))
    views = np.asarray(augment.ten_views(jnp.asarray(images), 6))
    corners = [images[:, :6, :6], images[:, :6, 4:], images[:, 4:, :6], images[:, 4:, 4:], images[:, 2:8, 2:8]]
    want = np.stack(corners + [c[:, :, ::-1] for c in corners])
    np.testing.assert_array_equal(views, want)


def test_data_stats_match_numpy():
    rng = np.random.RandomState(5)
    images = rng.randint(0, 256, (10, 4, 4, 3)).astype(np.uint8)
    stats = data_stats.compute([images[:6], images[6:]], 10)
    np.testing.assert_allclose(stats["mean_image"], images.mean(0), rtol=1e-5)
    pixels = images.reshape(-1, 3).astype(np.float64)
    covariance = np.cov(pixels.T, bias=True)
    rebuilt = stats["eigvecs"] @ np.diag(stats["sqrt_eigvals"] ** 2) @ stats["eigvecs"].T
    np.testing.assert_allclose(rebuilt, covariance, rtol=1e-4)


@pytest.mark.parametrize("views, flip", [("center", True), ("ten_view", True), ("ten_view", False)])
def test_eval_step_averages_view_softmaxes(tiny_config, views, flip):
    """The centre crop; the paper's 10 views; 5 (no mirrors) for a net trained without flips."""
    config = tiny_config.copy_and_resolve_references()
    config.eval_views = views
    config.random_flip = flip
    model = steps.create_model(config)
    images = jnp.asarray(np.random.RandomState(6).randint(0, 256, (3, 72, 72, 3)), jnp.uint8)
    params = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)["params"]
    stats = augment.published_stats((100.0, 100.0, 100.0))
    batch = {"image": images, "label": jnp.array([0, 1, 2]), "mask": jnp.array([1, 1, 0])}
    got = steps.eval_step(params, batch, config=config, model=model, stats=stats)

    floats = np.asarray(images, np.float32) - 100.0
    crops = [floats[:, 4:68, 4:68]]
    if views == "ten_view":
        crops = [floats[:, :64, :64], floats[:, :64, 8:], floats[:, 8:, :64], floats[:, 8:, 8:], floats[:, 4:68, 4:68]]
        crops += [c[:, :, ::-1] for c in crops] if flip else []
    assert augment.effective_views(views, flip) == {1: "center", 5: "five_view", 10: "ten_view"}[len(crops)]
    probs = np.mean([jax.nn.softmax(model.apply({"params": params}, jnp.asarray(c), train=False)) for c in crops], 0)
    losses = -np.log(probs[np.arange(3), [0, 1, 2]])
    assert got.num_examples() == 2  # the masked example does not count
    np.testing.assert_allclose(float(got.loss.compute()), losses[:2].mean(), rtol=1e-4)


@pytest.mark.parametrize("chunk", [1, 4])
def test_train_input_means_turn_inputs_back_into_their_pixels(chunk):
    """What TensorBoard shows: the inputs plus the mean they had subtracted
    (a mean image here, cropped and flipped like them) are the raw crops."""
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (8, 12, 12, 3)), jnp.uint8)
    mean_image = augment.DataStats(jnp.asarray(rng.uniform(0, 255, (12, 12, 3)), jnp.float32), *_pca())
    no_mean = augment.DataStats(jnp.zeros(3, jnp.float32), *_pca())
    key = jax.random.key(3)
    kwargs = dict(crop=8, flip=True, chunk=chunk, pca_std=0.0)
    inputs = augment.train_inputs(images, key, mean_image, **kwargs)
    means = augment.train_input_means(images.shape, key, mean_image, crop=8, flip=True, chunk=chunk)
    np.testing.assert_allclose(inputs + means, augment.train_inputs(images, key, no_mean, **kwargs), atol=1e-4)


def _pca():
    return jnp.eye(3, dtype=jnp.float32), jnp.ones(3, jnp.float32)


def test_colour_noise_stops_at_its_end_epoch(tiny_config):
    """Run #145 turned the colour noise off at epoch 67: from the end step on,
    the step's inputs are those of a run without noise (same crops, flips)."""
    from alexnet_jax.parallel import sharding

    config = tiny_config.copy_and_resolve_references()
    config.pca_noise_end_epoch = 2.5
    assert steps.noise_end_step(config, steps_per_epoch=4) == 10
    config.pca_noise_end_epoch = -1.0
    assert steps.noise_end_step(config, steps_per_epoch=4) is None
    quiet = config.copy_and_resolve_references()
    quiet.pca_noise_std = 0.0
    state = steps.create_train_state(config, steps.create_model(config), 4, sharding.make_mesh((1, 1)))
    batch = {"image": jnp.asarray(np.random.RandomState(2).randint(0, 256, (16, 72, 72, 3)), jnp.uint8)}
    batch["label"] = jnp.zeros(16, jnp.int32)
    stats = augment.published_stats((100.0, 100.0, 100.0))

    def inputs(config, step, end):
        at_step = state.replace(step=jnp.asarray(step, state.step.dtype))
        inspected = inspection.inspect_step(
            at_step, batch, jax.random.key(0), config=config, stats=stats, noise_end_step=end
        )
        return np.asarray(inspected.images)

    assert not np.allclose(inputs(config, 9, 10), inputs(quiet, 9, 10))  # still noisy
    np.testing.assert_allclose(inputs(config, 10, 10), inputs(quiet, 10, 10))  # off from step 10
