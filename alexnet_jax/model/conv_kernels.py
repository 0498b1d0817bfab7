"""Convolutions computed another way, for speed, with the numbers of
`lax.conv_general_dilated` up to float summation order (NHWC, HWIO):

- `space_to_depth_conv`: a strided convolution as a stride-1 one over blocks
  of stride x stride pixels (a faster GPU kernel for AlexNet's 3-channel
  conv1);
- `gemm_wgrad_conv`: the kernel gradient as one matrix product of the
  input's patches (faster on XLA:CPU than its own kernel gradient).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def space_to_depth_conv(
    x_nhwc: Array,
    kernel_hwio: Array,
    strides: int | Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    gemm_wgrad: bool = False,
) -> Array:
    """`lax.conv_general_dilated(x, kernel, strides, padding)` (NHWC, HWIO)
    computed as a stride-1 convolution over blocks of stride x stride pixels.

    The kernel is zero-padded at its far edge to a multiple of the stride and
    both it and the (padded) input are rearranged so each block of sh x sw
    pixels becomes sh*sw*C channels: an 11x11/4 conv of 3 channels becomes a
    3x3/1 conv of 48. Same products, only summed in another order. The
    rearrangement happens on the fly, so `kernel_hwio` keeps its shape and
    gets the gradient. Worth it when C is small: cuDNN runs a 3-channel conv
    on a slow kernel that does not use tensor cores (AlexNet's conv1).
    """
    n, height, width, channels = x_nhwc.shape
    kh, kw, kernel_channels, features = kernel_hwio.shape
    if kernel_channels != channels:
        raise ValueError(f"space_to_depth_conv: kernel reads {kernel_channels} channels, input has {channels}")
    sh, sw = (strides, strides) if isinstance(strides, int) else tuple(strides)
    (top, bottom), (left, right) = _explicit_padding(padding, (height, width), (kh, kw), (sh, sw))
    out_h = (height + top + bottom - kh) // sh + 1
    out_w = (width + left + right - kw) // sw + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"space_to_depth_conv: a {kh}x{kw} kernel has no window in the padded {x_nhwc.shape} input")
    # Zero taps past the kernel's far edge: they add nothing, whatever pixel they read.
    blocks_h, blocks_w = -(-kh // sh), -(-kw // sw)
    kernel = jnp.pad(kernel_hwio, ((0, blocks_h * sh - kh), (0, blocks_w * sw - kw), (0, 0), (0, 0)))
    # A stride-1 VALID conv of blocks_h block rows gives out_h outputs from
    # out_h + blocks_h - 1 input block rows: pad the far edge up to that, or
    # crop rows no window reads (lax.pad crops where the padding is negative).
    rows, cols = (out_h + blocks_h - 1) * sh, (out_w + blocks_w - 1) * sw
    x = jax.lax.pad(
        x_nhwc,
        jnp.zeros((), x_nhwc.dtype),
        ((0, 0, 0), (top, rows - height - top, 0), (left, cols - width - left, 0), (0, 0, 0)),
    )
    # Pixel (i*sh + r, j*sw + s, c) -> block (i, j), channel (r, s, c); the
    # kernel tap (a*sh + r, b*sw + s, c) -> block tap (a, b), channel (r, s, c).
    x = x.reshape(n, rows // sh, sh, cols // sw, sw, channels).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(n, rows // sh, cols // sw, sh * sw * channels)
    kernel = kernel.reshape(blocks_h, sh, blocks_w, sw, channels, features).transpose(0, 2, 1, 3, 4, 5)
    kernel = kernel.reshape(blocks_h, blocks_w, sh * sw * channels, features)
    if gemm_wgrad:  # the stride-1 conv's kernel gradient from contiguous 48-channel taps
        return gemm_wgrad_conv(x, kernel, (1, 1), "VALID")
    return _plain_conv(x, kernel, (1, 1), "VALID")


def _explicit_padding(padding: str | Sequence[tuple[int, int]], in_hw, kernel_hw, strides) -> tuple:
    if isinstance(padding, str):
        return tuple(jax.lax.padtype_to_pads(in_hw, kernel_hw, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def gemm_wgrad_conv(
    x_nhwc: Array, kernel_hwio: Array, strides: Sequence[int], padding: str | Sequence[tuple[int, int]]
) -> Array:
    """`lax.conv_general_dilated` (NHWC, HWIO, no groups) whose kernel gradient
    is one matrix product of the input's patches with the output gradient.

    XLA:CPU computes a convolution's kernel gradient as another convolution
    (the batch contracted, the output as a dilated window) and runs it 2-4x
    slower than the forward pass of the same FLOPs (BENCHMARKS.md, the
    profile). Here the kh*kw strided views of the padded input are stacked
    into (positions, kh*kw*C) patches and the gradient is
    patches^T @ output-gradient, a plain GEMM. The forward pass and the input
    gradient are XLA's own; only the order of summation differs.
    """
    strides = tuple(int(s) for s in strides)
    pads = _explicit_padding(padding, x_nhwc.shape[1:3], kernel_hwio.shape[:2], strides)
    return _gemm_wgrad_conv(x_nhwc, kernel_hwio, strides, pads)


def window_taps(x_nhwc: Array, window_hw: tuple, strides: tuple, out_hw: tuple) -> list[Array]:
    """Tap (i, j) of every output position of a VALID window over x: a
    strided view of x, at index i * window_w + j (row-major taps)."""
    (kh, kw), (sh, sw), (out_h, out_w) = window_hw, strides, out_hw
    n, _, _, channels = x_nhwc.shape
    return [
        jax.lax.slice(
            x_nhwc, (0, i, j, 0), (n, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, channels), (1, sh, sw, 1)
        )
        for i in range(kh)
        for j in range(kw)
    ]


def _plain_conv(x_nhwc: Array, kernel_hwio: Array, strides: tuple, pads: tuple) -> Array:
    return jax.lax.conv_general_dilated(x_nhwc, kernel_hwio, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _gemm_wgrad_conv(x_nhwc: Array, kernel_hwio: Array, strides: tuple, pads: tuple) -> Array:
    return _plain_conv(x_nhwc, kernel_hwio, strides, pads)


def _gemm_wgrad_conv_fwd(x_nhwc, kernel_hwio, strides, pads):
    return _plain_conv(x_nhwc, kernel_hwio, strides, pads), (x_nhwc, kernel_hwio)


def _gemm_wgrad_conv_bwd(strides, pads, residuals, grad_nhwo):
    x_nhwc, kernel_hwio = residuals
    _, input_vjp = jax.vjp(lambda x: _plain_conv(x, kernel_hwio, strides, pads), x_nhwc)
    (grad_x,) = input_vjp(grad_nhwo)
    kh, kw, channels, features = kernel_hwio.shape
    (sh, sw), (out_h, out_w) = strides, grad_nhwo.shape[1:3]
    x = jax.lax.pad(x_nhwc, jnp.zeros((), x_nhwc.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    taps = window_taps(x, (kh, kw), (sh, sw), (out_h, out_w))
    # As 2-D matrices (positions, kh*kw*C) and (positions, O): XLA:CPU runs
    # this product several times faster than the same einsum over 5-D arrays.
    patches = jnp.stack(taps, axis=3).reshape(-1, kh * kw * channels)
    grad_kernel = patches.T @ grad_nhwo.reshape(-1, features).astype(x.dtype)
    return grad_x, grad_kernel.reshape(kh, kw, channels, features).astype(kernel_hwio.dtype)


_gemm_wgrad_conv.defvjp(_gemm_wgrad_conv_fwd, _gemm_wgrad_conv_bwd)
