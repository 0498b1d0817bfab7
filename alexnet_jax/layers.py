"""Layers AlexNet needs that no library ships: LRN, the within-channel norm,
convolutions split into towers, and the paper's (not inverted) dropout.

Everything here works on NHWC arrays. Channels of a tower-split activation
are laid out tower after tower: channels [0, C/towers) belong to tower a,
[C/towers, 2C/towers) to tower b, matching the weight layout of a grouped
convolution (`feature_group_count=towers`).

Sharding is expressed with flax logical axis names (the rules that map them
onto a device mesh live in alexnet_jax.sharding). Without a mesh and rules in
context every annotation here is a no-op, so the layers run unsharded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import PartitionSpec as P

Array = jax.Array
Initializer = Callable[..., Array]

TowerImpl = Literal["split", "grouped"]
DropoutScaling = Literal["test", "train"]

# Logical axes of activations and parameters. Convolutions split their
# output channels tower after tower along CONV_CHANNELS, dense layers their
# outputs along HIDDEN; the batch has separate names for the conv and dense
# parts so a scheme can spread the conv batch over more devices.
CONV_BATCH, CONV_CHANNELS = "conv_batch", "conv_channels"
DENSE_BATCH, HIDDEN = "dense_batch", "hidden"
CONV_ACTIVATION = (CONV_BATCH, None, None, CONV_CHANNELS)
DENSE_ACTIVATION = (DENSE_BATCH, HIDDEN)


def tower_mesh_axis(towers: int) -> str | None:
    """The mesh axis holding one tower per device, or None when the towers
    are not spread over devices (no mesh in context, or a size-1 axis).

    Read from the logical axis rules in context: CONV_CHANNELS mapped to a
    mesh axis of size `towers` puts each tower on its own device.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if towers == 1 or mesh.empty:
        return None
    axis = nn.logical_to_mesh_axes((CONV_CHANNELS,))[0]
    if axis is None or mesh.shape[axis] == 1:
        return None
    if not isinstance(axis, str) or mesh.shape[axis] != towers:
        raise ValueError(
            f"TowerConv: conv channels are sharded over mesh axes {axis!r} of shape {dict(mesh.shape)}; "
            f"with {towers} towers use one mesh axis of size 1 or {towers}"
        )
    return axis


def _inverse_power(base: Array, beta: float) -> Array:
    """base ** -beta; for the paper's beta = 0.75 as rsqrt(b) * sqrt(rsqrt(b)),
    which XLA:CPU runs (forward and backward) about 1.7x faster than pow's
    exp/log (bench: LRN at conv1's size, batch 32)."""
    if beta == 0.75:
        inv_sqrt = jax.lax.rsqrt(base)
        return inv_sqrt * jnp.sqrt(inv_sqrt)
    return jnp.power(base, -beta)


def local_response_norm(
    x_nhwc: Array,
    *,
    towers: int = 1,
    k: float = 2.0,
    n: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    alpha_over_n: bool = True,
) -> Array:
    """Local response normalisation across channels (the paper's Section 3.3).

    b[c] = a[c] / (k + s * sum_{j=c-n//2}^{c+n//2} a[j]^2) ** beta, where the
    sum stays within the tower holding channel c and s is `alpha / n` (the
    2012 code, PyTorch's `nn.LocalResponseNorm`) or `alpha` (the printed
    formula) depending on `alpha_over_n`.
    """
    channels = x_nhwc.shape[-1]
    if channels % towers:
        raise ValueError(f"LRN: {channels} channels do not split into {towers} towers")
    scale = alpha / n if alpha_over_n else alpha
    # Squares and sums in float32: bfloat16 sums of squares lose the small terms.
    # A windowed sum over the channel axis, zero-padded at each tower's edges.
    per_tower = x_nhwc.astype(jnp.float32).reshape(*x_nhwc.shape[:-1], towers, channels // towers)
    window = (1,) * (per_tower.ndim - 1) + (n,)
    padding = ((0, 0),) * (per_tower.ndim - 1) + ((n // 2, (n - 1) // 2),)
    normed = _divisive_norm(per_tower, window, padding, float(k), float(scale), float(beta))
    return normed.reshape(x_nhwc.shape).astype(x_nhwc.dtype)


def within_channel_norm(
    x_nhwc: Array, *, size: int = 5, scale: float = 1e-3, beta: float = 0.75, k: float = 1.0
) -> Array:
    """cuda-convnet's `rnorm` layer: normalisation over a spatial window of
    each channel on its own.

    b[y, x, c] = a[y, x, c] / (k + scale / size**2 * sum_{size x size} a^2) ** beta,
    the window centred on (y, x) and zero-padded at the borders. The 2012 code
    applies it after LRN2 (scale 1e-3, pow 0.75); the paper does not mention it.
    """
    half = size // 2
    padding = ((0, 0), (half, size - 1 - half), (half, size - 1 - half), (0, 0))
    normed = _divisive_norm(
        x_nhwc.astype(jnp.float32), (1, size, size, 1), padding, float(k), float(scale / size**2), float(beta)
    )
    return normed.astype(x_nhwc.dtype)


def _window_sum(v: Array, window: tuple, padding: tuple) -> Array:
    return jax.lax.reduce_window(v, 0.0, jax.lax.add, window, (1,) * v.ndim, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _divisive_norm(x: Array, window: tuple, padding: tuple, k: float, scale: float, beta: float) -> Array:
    """x / (k + scale * S) ** beta, S the zero-padded `window` sum of x^2
    (stride 1, same size; float32).

    The gradient is written out so the backward pass keeps only x and S:
    with d = k + scale * S and T the transposed window sum of
    g * x * d ** (-beta - 1), dx = g * d ** -beta - 2 * scale * beta * x * T.
    Left to autodiff, XLA:CPU also stores d ** -beta and its factors, two
    more passes over conv1's and conv2's outputs (bench.profile_step).
    """
    return _divisive_norm_fwd(x, window, padding, k, scale, beta)[0]


def _divisive_norm_fwd(x, window, padding, k, scale, beta):
    sums = _window_sum(jnp.square(x), window, padding)
    return x * _inverse_power(k + scale * sums, beta), (x, sums)


def _divisive_norm_bwd(window, padding, k, scale, beta, residuals, grad):
    x, sums = residuals
    base = k + scale * sums
    factor = _inverse_power(base, beta)
    # Output o's window covers inputs o - lo .. o + hi: input j is in the
    # windows of outputs j - hi .. j + lo, a window sum with padding (hi, lo).
    transposed = tuple((hi, lo) for lo, hi in padding)
    spread = _window_sum(grad * x * factor / base, window, transposed)
    return (grad * factor - (2.0 * scale * beta) * x * spread,)


_divisive_norm.defvjp(_divisive_norm_fwd, _divisive_norm_bwd)


class Dropout(nn.Module):
    """Dropout scaled at test time (the paper's) or at training (inverted).

    `scaling="test"` (PAPER.md, Section 4.2): at training each unit is zeroed
    with probability `rate` and the kept ones pass unchanged; at test every
    unit passes, multiplied by 1 - rate. `scaling="train"`: flax's
    `nn.Dropout` exactly (kept units divided by 1 - rate at training, nothing
    at test). Both draw the same mask from the same key: the class shares
    `nn.Dropout`'s name, so auto-naming gives it the same scope
    (`Dropout_0`, ...) and `make_rng` the same key, and the draw is
    `nn.Dropout`'s. The two compute the same test-time function when the
    layer reading the output has (1 - rate) times the weights in the
    inverted form; under SGD they train differently (PAPER.md, Network).
    """

    rate: float
    scaling: DropoutScaling = "test"

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        if self.rate == 0.0:
            return x
        keep_prob = 1.0 - self.rate
        if not train:
            return x if self.scaling == "train" else x * jnp.asarray(keep_prob, x.dtype)
        kept = jax.random.bernoulli(self.make_rng("dropout"), p=keep_prob, shape=x.shape)
        return jax.lax.select(kept, x / keep_prob if self.scaling == "train" else x, jnp.zeros_like(x))


def conv_output_size(size: int, kernel: int, stride: int) -> int:
    """Output length of a strided conv whose last window may hang past the edge.

    The 2012 code computes 1 + ceil((size - kernel) / stride) outputs and reads
    zeros past the input's end, so a 224 input gives 55 outputs for conv1.
    """
    return 1 + -(-(size - kernel) // stride)


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


def _window_taps(x_nhwc: Array, window_hw: tuple, strides: tuple, out_hw: tuple) -> list[Array]:
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
    taps = _window_taps(x, (kh, kw), (sh, sw), (out_h, out_w))
    # As 2-D matrices (positions, kh*kw*C) and (positions, O): XLA:CPU runs
    # this product several times faster than the same einsum over 5-D arrays.
    patches = jnp.stack(taps, axis=3).reshape(-1, kh * kw * channels)
    grad_kernel = patches.T @ grad_nhwo.reshape(-1, features).astype(x.dtype)
    return grad_x, grad_kernel.reshape(kh, kw, channels, features).astype(kernel_hwio.dtype)


_gemm_wgrad_conv.defvjp(_gemm_wgrad_conv_fwd, _gemm_wgrad_conv_bwd)


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
    """The window's window**2 strided views of x (`_window_taps`)."""
    _, h, w, _ = x_nhwc.shape
    out_hw = ((h - window) // stride + 1, (w - window) // stride + 1)
    return _window_taps(x_nhwc, (window, window), (stride, stride), out_hw)


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


class TowerConv(nn.Module):
    """A convolution whose input and output channels are split into towers.

    The kernel has the layout of a grouped convolution, (kh, kw, in/towers, out),
    so checkpoints and parameter counts are the paper's whatever `impl` is:
      - "grouped": one `lax.conv` with `feature_group_count=towers`;
      - "split": one convolution per tower, outputs concatenated. Identical
        numbers; XLA:CPU runs its backward pass several times faster.
    When the rules in context put one tower per device (`tower_mesh_axis`),
    each device convolves its own tower's channels with its own kernel under
    `jax.shard_map`, whatever `impl` is: XLA's partitioner would otherwise
    gather both towers onto every device (it does not split grouped
    convolutions by group, nor slices of a sharded axis).
    `space_to_depth` computes each (per-tower) convolution with
    `space_to_depth_conv`: same numbers, a faster GPU kernel for few input
    channels; with towers > 1 it needs `impl="split"`. `gemm_wgrad` takes
    the kernel gradient of each ungrouped convolution as one matrix product
    (`gemm_wgrad_conv`): same numbers, faster on XLA:CPU.
    """

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Any = "SAME"
    towers: int = 1
    impl: TowerImpl = "split"
    space_to_depth: bool = False
    gemm_wgrad: bool = False
    kernel_init: Initializer = nn.initializers.normal(0.01)
    bias_init: Initializer = nn.initializers.zeros
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_nhwc: Array) -> Array:
        in_features = x_nhwc.shape[-1]
        if in_features % self.towers or self.features % self.towers:
            raise ValueError(
                f"TowerConv: {in_features} inputs / {self.features} outputs do not split into {self.towers} towers"
            )
        kernel_shape = (*self.kernel_size, in_features // self.towers, self.features)
        kernel = self.param("kernel", self.kernel_init, kernel_shape, jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        x_nhwc, kernel, bias = x_nhwc.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)

        def conv(inputs: Array, weights: Array, groups: int) -> Array:
            if self.space_to_depth:
                if groups != 1:
                    raise ValueError("TowerConv: space_to_depth does not take grouped convolutions; use impl='split'")
                return space_to_depth_conv(inputs, weights, self.strides, self.padding, self.gemm_wgrad)
            if self.gemm_wgrad and groups == 1:
                return gemm_wgrad_conv(inputs, weights, self.strides, self.padding)
            return jax.lax.conv_general_dilated(
                inputs,
                weights,
                window_strides=tuple(self.strides),
                padding=self.padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=groups,
            )

        tower_axis = tower_mesh_axis(self.towers)
        if tower_axis is not None:
            channels = P(None, None, None, tower_axis)
            per_device = jax.shard_map(
                lambda i, w: conv(i, w, 1),
                in_specs=(channels, channels),
                out_specs=channels,
                axis_names={tower_axis},
            )
            y = per_device(x_nhwc, kernel)
        elif self.towers == 1 or self.impl == "grouped":
            y = conv(x_nhwc, kernel, self.towers)
        elif self.impl == "split":
            inputs = jnp.split(x_nhwc, self.towers, axis=-1)
            weights = jnp.split(kernel, self.towers, axis=-1)
            y = jnp.concatenate([conv(i, w, 1) for i, w in zip(inputs, weights)], axis=-1)
        else:
            raise ValueError(f"TowerConv: unknown impl {self.impl!r}; use 'split' or 'grouped'")
        return y + bias
