"""Layers AlexNet needs that no library ships: LRN, the within-channel norm,
convolutions split into towers, and the paper's (not inverted) dropout.

Everything here works on NHWC arrays. Channels of a tower-split activation
are laid out tower after tower: channels [0, C/towers) belong to tower a,
[C/towers, 2C/towers) to tower b, matching the weight layout of a grouped
convolution (`feature_group_count=towers`).

Sharding is expressed with flax logical axis names (the rules that map them
onto a device mesh live in alexnet_jax.parallel.sharding): activations through
logical constraints, parameters through their initialisers
(`with_logical_axes`). Without a mesh and rules in context every annotation
here is a no-op, so the layers run unsharded and initialise plain arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from alexnet_jax.model import conv_kernels

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
# The parameters' logical axes: a convolution's kernel (HWIO) and bias split
# their output channels tower after tower, a dense layer's its outputs (each
# device computes its share of them).
CONV_KERNEL_AXES, CONV_BIAS_AXES = (None, None, None, CONV_CHANNELS), (CONV_CHANNELS,)
DENSE_KERNEL_AXES, DENSE_BIAS_AXES = (None, HIDDEN), (HIDDEN,)


def with_logical_axes(init: Initializer, axes: tuple[str | None, ...]) -> Initializer:
    """`init`, its parameter named with the logical `axes`.

    With logical axis rules in context (a train state being laid out on a
    mesh) the value comes boxed in flax's `nn.LogicallyPartitioned`, which
    `nn.get_partition_spec` reads and the state's creator unboxes; without
    rules it is the plain array, so `Module.init` gives the parameters every
    checkpoint holds. Either way the module computes with the plain array.
    """
    boxed = nn.with_logical_partitioning(init, axes)

    @functools.wraps(init)
    def initializer(*args, **kwargs) -> Any:
        return boxed(*args, **kwargs) if nn.get_logical_axis_rules() else init(*args, **kwargs)

    return initializer


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

    `scaling="test"` (docs/paper.md, Dropout): at training each unit is zeroed
    with probability `rate` and the kept ones pass unchanged; at test every
    unit passes, multiplied by 1 - rate. `scaling="train"`: flax's
    `nn.Dropout` exactly (kept units divided by 1 - rate at training, nothing
    at test). Both draw the same mask from the same key: the class shares
    `nn.Dropout`'s name, so auto-naming gives it the same scope
    (`Dropout_0`, ...) and `make_rng` the same key, and the draw is
    `nn.Dropout`'s. The two compute the same test-time function when the
    layer reading the output has (1 - rate) times the weights in the
    inverted form; under SGD they train differently (docs/paper.md, Dropout).
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
    `conv_kernels.space_to_depth_conv`: same numbers, a faster GPU kernel for few input
    channels; with towers > 1 it needs `impl="split"`. `gemm_wgrad` takes
    the kernel gradient of each ungrouped convolution as one matrix product
    (`conv_kernels.gemm_wgrad_conv`): same numbers, faster on XLA:CPU.
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
        kernel = self.param("kernel", with_logical_axes(self.kernel_init, CONV_KERNEL_AXES), kernel_shape, jnp.float32)
        bias = self.param("bias", with_logical_axes(self.bias_init, CONV_BIAS_AXES), (self.features,), jnp.float32)
        x_nhwc, kernel, bias = x_nhwc.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)

        def conv(inputs: Array, weights: Array, groups: int) -> Array:
            if self.space_to_depth:
                if groups != 1:
                    raise ValueError("TowerConv: space_to_depth does not take grouped convolutions; use impl='split'")
                return conv_kernels.space_to_depth_conv(inputs, weights, self.strides, self.padding, self.gemm_wgrad)
            if self.gemm_wgrad and groups == 1:
                return conv_kernels.gemm_wgrad_conv(inputs, weights, self.strides, self.padding)
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
