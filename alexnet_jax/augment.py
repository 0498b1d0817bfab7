"""Augmentation in jitted JAX, on the device.

The host sends uint8 images already resized to `resize_size` x `resize_size`
(256 for ImageNet: shorter side to 256, centre crop). These functions run
inside the jitted train/eval steps: crops, flips and mean subtraction cost
no host time and no float bytes over the host-device link.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def random_crop_flip(images_bhwc: Array, key: Array, crop: int, flip: bool) -> Array:
    """A random `crop` x `crop` window and (if `flip`) a random horizontal
    flip, drawn independently per image."""
    batch, height, width, _ = images_bhwc.shape
    crop_key, flip_key = jax.random.split(key)
    y_key, x_key = jax.random.split(crop_key)
    ys = jax.random.randint(y_key, (batch,), 0, height - crop + 1)
    xs = jax.random.randint(x_key, (batch,), 0, width - crop + 1)

    def crop_one(image: Array, y: Array, x: Array) -> Array:
        return jax.lax.dynamic_slice(image, (y, x, 0), (crop, crop, image.shape[-1]))

    crops = jax.vmap(crop_one)(images_bhwc, ys, xs)
    if flip:
        flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
        crops = jnp.where(flips[:, None, None, None], crops[:, :, ::-1, :], crops)
    return crops


def center_crop(images_bhwc: Array, crop: int) -> Array:
    """The central `crop` x `crop` window (the single-view test)."""
    _, height, width, _ = images_bhwc.shape
    top, left = (height - crop) // 2, (width - crop) // 2
    return images_bhwc[:, top : top + crop, left : left + crop, :]


def subtract_mean(images_bhwc: Array, mean_rgb: Sequence[float]) -> Array:
    """uint8 0..255 -> float32 with the training mean removed, as the paper."""
    return images_bhwc.astype(jnp.float32) - jnp.asarray(mean_rgb, jnp.float32)
