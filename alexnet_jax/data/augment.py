"""Augmentation in jitted JAX, on the device.

The host sends uint8 images already resized to `resize_size` x `resize_size`
(256 for ImageNet: shorter side to 256, centre crop). These functions run
inside the jitted train/eval steps: crops, flips, PCA colour noise and mean
subtraction cost no host time and no float bytes over the host-device link.

Order, as in the paper: subtract the mean (a 256x256 image or a per-channel
mean), add the per-image colour offset, then crop and flip.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class DataStats(NamedTuple):
    """What augmentation needs from the training set (0..255 units)."""

    mean: Array  # (H, W, 3) mean image or (3,) per-channel mean
    eigvecs: Array  # (3, 3) RGB covariance eigenvectors, as columns
    sqrt_eigvals: Array  # (3,) square roots of the matching eigenvalues


# cuda-convnet2's ImageNet PCA (docs/paper.md): eigenvectors as columns, and the
# square roots of the eigenvalues, on 0..255 pixels.
PUBLISHED_EIGVECS = ((0.4180, -0.7126, -0.5635), (-0.8170, -0.0235, -0.5762), (0.3973, 0.7012, -0.5920))
PUBLISHED_SQRT_EIGVALS = (19.72, 37.09, 121.78)


def published_stats(mean_rgb) -> DataStats:
    """docs/paper.md's ImageNet statistics: the per-channel mean `mean_rgb` and
    cuda-convnet2's PCA (`config.data_stats = "published"`)."""
    return DataStats(
        mean=jnp.asarray(mean_rgb, jnp.float32),
        eigvecs=jnp.asarray(PUBLISHED_EIGVECS, jnp.float32),
        sqrt_eigvals=jnp.asarray(PUBLISHED_SQRT_EIGVALS, jnp.float32),
    )


def random_crop_flip(images_bhwc: Array, key: Array, crop: int, flip: bool, chunk: int = 1) -> Array:
    """A random `crop` x `crop` window and (if `flip`) a random horizontal flip.

    `chunk=1` draws offset and flip per image (the paper's text); the 2012
    code drew one per chunk of 32 consecutive images (`chunk=32`).
    """
    batch, height, width, _ = images_bhwc.shape
    draws = -(-batch // chunk)
    crop_key, flip_key = jax.random.split(key)
    y_key, x_key = jax.random.split(crop_key)
    ys = jnp.repeat(jax.random.randint(y_key, (draws,), 0, height - crop + 1), chunk)[:batch]
    xs = jnp.repeat(jax.random.randint(x_key, (draws,), 0, width - crop + 1), chunk)[:batch]

    def crop_one(image: Array, y: Array, x: Array) -> Array:
        return jax.lax.dynamic_slice(image, (y, x, 0), (crop, crop, image.shape[-1]))

    crops = jax.vmap(crop_one)(images_bhwc, ys, xs)
    if flip:
        flips = jnp.repeat(jax.random.bernoulli(flip_key, 0.5, (draws,)), chunk)[:batch]
        crops = jnp.where(flips[:, None, None, None], crops[:, :, ::-1, :], crops)
    return crops


def pca_colour_offsets(key: Array, batch: int, stats: DataStats, alpha_std: float) -> Array:
    """Per-image RGB offsets V @ (alpha * sqrt(lambda)), alpha ~ N(0, alpha_std).

    docs/paper.md (Data; the paper's Section 4.1): a multiple of the principal components of the
    training set's RGB covariance, the same for every pixel of an image.
    """
    alphas = alpha_std * jax.random.normal(key, (batch, 3))
    return (alphas * stats.sqrt_eigvals) @ stats.eigvecs.T


def train_inputs(
    images_bhwc: Array,
    key: Array,
    stats: DataStats,
    *,
    crop: int,
    flip: bool,
    chunk: int = 1,
    pca_std: float | Array = 0.1,
) -> Array:
    """The training batch from uint8 images: mean subtraction, PCA colour
    noise (off when `pca_std` is 0), random crop and flip; float32."""
    noise_key, crop_key = jax.random.split(key)
    images = images_bhwc.astype(jnp.float32) - stats.mean
    if not isinstance(pca_std, int | float) or pca_std > 0:  # a traced std may turn to 0 (noise's end)
        offsets = pca_colour_offsets(noise_key, images.shape[0], stats, pca_std)
        images = images + offsets[:, None, None, :]
    return random_crop_flip(images, crop_key, crop, flip, chunk)


def train_input_means(
    shape_bhwc: tuple[int, ...], key: Array, stats: DataStats, *, crop: int, flip: bool, chunk: int = 1
) -> Array:
    """What `train_inputs(images, key, stats, ...)` subtracted from each of its
    outputs (the mean image or per-channel mean), cropped and flipped as those
    were (same key, same shape, same draws): adding it back shows the inputs
    as pixels, colour noise included."""
    _, crop_key = jax.random.split(key)
    means = jnp.broadcast_to(stats.mean, (*shape_bhwc[:3], 3))
    return random_crop_flip(means, crop_key, crop, flip, chunk)


def center_crop(images_bhwc: Array, crop: int) -> Array:
    """The central `crop` x `crop` window (the single-view test)."""
    _, height, width, _ = images_bhwc.shape
    top, left = (height - crop) // 2, (width - crop) // 2
    return images_bhwc[:, top : top + crop, left : left + crop, :]


def ten_views(images_bhwc: Array, crop: int) -> Array:
    """The paper's 10 test views, shape (10, batch, crop, crop, C): the four
    corner crops and the centre crop, then the same five flipped."""
    _, height, width, _ = images_bhwc.shape
    corners = [(0, 0), (0, width - crop), (height - crop, 0), (height - crop, width - crop)]
    views = [images_bhwc[:, y : y + crop, x : x + crop, :] for y, x in corners]
    views.append(center_crop(images_bhwc, crop))
    views = jnp.stack(views)
    return jnp.concatenate([views, views[:, :, :, ::-1, :]])


def effective_views(eval_views: str, flip: bool) -> str:
    """The views evaluation takes: "center", or the paper's "ten_view", which
    are "five_view" (corners and centre, no mirrors) for a network trained
    without flips: it never saw a mirrored image (a flipped 2 is not a 2)."""
    if eval_views == "ten_view" and not flip:
        return "five_view"
    return eval_views


def eval_inputs(images_bhwc: Array, stats: DataStats, *, crop: int, views: str) -> Array:
    """Mean-subtracted evaluation views, (V, batch, crop, crop, 3) with V = 1
    ("center"), 10 ("ten_view") or 5 ("five_view": the ten without mirrors)."""
    images = images_bhwc.astype(jnp.float32) - stats.mean
    if views == "ten_view":
        return ten_views(images, crop)
    if views == "five_view":
        return ten_views(images, crop)[:5]
    return center_crop(images, crop)[None]
