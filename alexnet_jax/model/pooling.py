"""Max-pooling whose gradient needs no scatter (`max_pool_taps`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from alexnet_jax.model import conv_kernels

Array = jax.Array


def max_pool_taps(x_nhwc: Array, window: int, stride: int) -> Array:
    """VALID `window` x `window` max-pooling with stride `stride` whose
    gradient needs no scatter.

    The forward pass is XLA's reduce-window (`nn.max_pool`'s). Its gradient
    is `nn.max_pool`'s, computed another way: each output's gradient goes to
    the first input of its window, in row-major order, that holds the
    maximum, as XLA's select-and-scatter does; where windows overlap the
    contributions are summed in another order. XLA:CPU computes
    select-and-scatter as an arg-max reduce-window over index arrays and a
    scatter, the paper CPU step's costliest work besides the convolutions
    and matrix products (`bench.profile_step`); here the first maximal tap
    is found from the window's strided views and the gradient is assembled
    stride phase by stride phase, each input position written once.
    """
    return _max_pool_taps(x_nhwc, window, stride)


def _pool_views(x_nhwc: Array, window: int, stride: int) -> list[Array]:
    """The window's window**2 strided views of x (`conv_kernels.window_taps`)."""
    _, h, w, _ = x_nhwc.shape
    out_hw = ((h - window) // stride + 1, (w - window) // stride + 1)
    return conv_kernels.window_taps(x_nhwc, (window, window), (stride, stride), out_hw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_taps(x_nhwc: Array, window: int, stride: int) -> Array:
    # nn.max_pool's reduce-window is computed on its own, not fused into (and
    # so recomputed by) each consumer, as the maximum of strided views would be.
    return nn.max_pool(x_nhwc, (window, window), strides=(stride, stride), padding="VALID")


def _max_pool_taps_fwd(x_nhwc, window, stride):
    pooled = _max_pool_taps(x_nhwc, window, stride)
    return pooled, (x_nhwc, pooled)


def _max_pool_taps_bwd(window, stride, residuals, grad_pooled):
    x_nhwc, pooled = residuals
    n, h, w, channels = x_nhwc.shape
    out_h, out_w = pooled.shape[1:3]
    # The first tap (row-major) of each window that holds its maximum.
    first_tap = jnp.full(pooled.shape, window * window, jnp.int32)
    for tap, view in reversed(list(enumerate(_pool_views(x_nhwc, window, stride)))):
        first_tap = jnp.where(view == pooled, tap, first_tap)
    zero = jnp.zeros((), grad_pooled.dtype)
    # Input row r = stride * y + i (output y, tap row i) has phase r % stride
    # = i % stride and row r // stride = y + i // stride: the gradient of
    # each phase is a sum of the output gradient shifted by i // stride, on
    # a grid of ceil(h / stride) rows (columns alike).
    rows, cols = -(-h // stride), -(-w // stride)
    phase_rows = []
    for phase_i in range(stride):
        phase_row = []
        for phase_j in range(stride):
            total = jnp.zeros((n, rows, cols, channels), grad_pooled.dtype)
            for i in range(phase_i, window, stride):
                for j in range(phase_j, window, stride):
                    di, dj = i // stride, j // stride
                    taken = jnp.where(first_tap == i * window + j, grad_pooled, zero)
                    shift = ((0, 0, 0), (di, rows - out_h - di, 0), (dj, cols - out_w - dj, 0), (0, 0, 0))
                    total = total + jax.lax.pad(taken, zero, shift)
            phase_row.append(total)
        phase_rows.append(jnp.stack(phase_row, axis=3))  # (n, rows, cols, phase_j, C)
    # (n, rows, phase_i, cols, phase_j, C) -> input positions, cropped to h x w.
    grad_x = jnp.stack(phase_rows, axis=2).reshape(n, rows * stride, cols * stride, channels)[:, :h, :w]
    return (grad_x.astype(x_nhwc.dtype),)


_max_pool_taps.defvjp(_max_pool_taps_fwd, _max_pool_taps_bwd)
