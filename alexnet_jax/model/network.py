"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) as a Flax linen module.

The layer table (alexnet_jax.model.layer_table), LRN constants and
initialisation follow docs/paper.md.
Every switch the ablations need is a plain field; the module never reads a
config (configs map `config.model.*` one to one onto these fields).

Defaults are "as trained" (the released 2012 code, run #145), which is what
produced the published numbers; the printed paper differs in:
  - `lrn_alpha_over_n=False`: LRN scale alpha instead of alpha / n;
  - `lrn1_before_relu=False`: conv1 -> ReLU -> LRN1 (the code normalises the
    raw conv1 output and applies ReLU after pool1);
  - `within_channel_norm=False`: no 5x5 within-channel norm after LRN2;
  - `init_scheme="printed"`: N(0, 0.01) for every weight (the code uses 0.03 for
    conv3..conv5).
Dropout follows the paper and the code alike (`dropout_scaling="test"`: no
rescaling at training, x0.5 at test); "train" is flax's inverted dropout.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

from alexnet_jax.model import layer_table, layers, pooling

Array = jax.Array

_HIDDEN = 4096
_PRINTED_INIT_STD = 0.01


def layer_names(extra_conv6: bool = False) -> tuple[str, ...]:
    """The layers with parameters, input to output: what init_reset, frozen
    and the per-layer learning-rate changes name."""
    return (*(layer.name for layer in layer_table.conv_stack(extra_conv6=extra_conv6)), "fc6", "fc7", "fc8")


LAYERS = layer_names(extra_conv6=True)  # of every variant


def final_feature_side(
    input_size: int, pool_window: int = 3, pool_stride: int = 2, stack: tuple[layer_table.ConvLayer, ...] | None = None
) -> int:
    """Spatial side of the last convolutional layer's output (6 for the
    paper's 224); < 1 if too small. conv1 is the only strided convolution
    (the others keep the size: SAME padding); each pooling shrinks it."""
    stack = layer_table.conv_stack() if stack is None else stack
    side = input_size
    for layer in stack:
        side = layer_table.conv_padding(side, layer.kernel, layer.stride)[1]
        if layer.pool:
            side = (side - pool_window) // pool_stride + 1
    return side


def smallest_input_size(pool_window: int = 3, pool_stride: int = 2) -> int:
    """The smallest input side the layer stack accepts (64 with 3x3/2 pools)."""
    size = 11
    while final_feature_side(size, pool_window, pool_stride) < 1:
        size += 1
    return size


def _scaled(features: int, width: float, towers: int) -> int:
    """Width-scaled channel count, kept divisible by the number of towers."""
    return max(towers, round(features * width / towers) * towers)


class AlexNet(nn.Module):
    """AlexNet with two towers expressed as grouped convolutions.

    Attributes mirror `config.model`: see alexnet_jax/runs/defaults.py for what each
    does. `__call__` takes NHWC images of shape (batch, input_size,
    input_size, 3), already mean-subtracted, and returns float32 logits.
    """

    num_classes: int = 1000
    input_size: int = 224
    width: float = 1.0
    filters: tuple[int, ...] = layer_table.PAPER_FILTERS
    towers: int = 2
    cross_tower: bool = True
    extra_conv6: bool = False
    tower_impl: layers.TowerImpl = "split"
    activation: Literal["relu", "tanh"] = "relu"
    use_lrn: bool = True
    lrn_k: float = 2.0
    lrn_n: int = 5
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    lrn_alpha_over_n: bool = True
    lrn1_before_relu: bool = True
    within_channel_norm: bool = True
    pool_window: int = 3
    pool_stride: int = 2
    dropout_rate: float = 0.5
    dropout_scaling: layers.DropoutScaling = "test"
    init_scheme: Literal["as_trained", "printed"] = "as_trained"
    init_match_fan_in: bool = False
    conv1_impl: Literal["auto", "direct", "space_to_depth"] = "auto"
    conv_wgrad: Literal["auto", "xla", "gemm"] = "auto"
    pool_impl: Literal["auto", "xla", "taps"] = "auto"
    dtype: str = "float32"

    def _conv1_space_to_depth(self) -> bool:
        """Whether conv1 runs as `conv_kernels.space_to_depth_conv`. Same numbers
        either way; "auto" takes it where it is faster (BENCHMARKS.md): on
        GPUs, whose cuDNN runs conv1's 3 input channels without tensor
        cores, and not on XLA:CPU, where it is slower."""
        if self.conv1_impl == "auto":
            return jax.default_backend() == "gpu"
        return self.conv1_impl == "space_to_depth"

    def _gemm_wgrad(self) -> bool:
        """Whether the convolutions' kernel gradients are matrix products
        (`conv_kernels.gemm_wgrad_conv`). Same numbers either way; "auto" leaves
        them to XLA everywhere: with XLA's own CPU convolution kernels
        (alexnet_jax.platform.xla_cpu_flags) its kernel gradients are the faster ones
        (BENCHMARKS.md)."""
        return self.conv_wgrad == "gemm"

    def _act(self, x: Array) -> Array:
        return nn.relu(x) if self.activation == "relu" else jnp.tanh(x)

    def _pool_by_taps(self) -> bool:
        """Whether max-pooling's gradient is `pooling.max_pool_taps`' (no
        scatter). Same numbers either way; "auto" takes it on XLA:CPU, where
        the paper step is faster with it (BENCHMARKS.md), and leaves GPUs
        and TPUs to XLA's select-and-scatter, where it was not measured."""
        if self.pool_impl == "auto":
            return jax.default_backend() == "cpu"
        return self.pool_impl == "taps"

    def _pool(self, x: Array) -> Array:
        if self._pool_by_taps():
            return pooling.max_pool_taps(x, self.pool_window, self.pool_stride)
        window = (self.pool_window, self.pool_window)
        return nn.max_pool(x, window, strides=(self.pool_stride, self.pool_stride), padding="VALID")

    def _lrn(self, x: Array, towers: int) -> Array:
        return layers.local_response_norm(
            x,
            towers=towers,
            k=self.lrn_k,
            n=self.lrn_n,
            alpha=self.lrn_alpha,
            beta=self.lrn_beta,
            alpha_over_n=self.lrn_alpha_over_n,
        )

    def _init(self, trained_std: float, paper_fan_in: int, fan_in: int) -> nn.initializers.Initializer:
        """N(0, std) with the scheme's std for this layer.

        With `init_match_fan_in`, std grows by sqrt(paper_fan_in / fan_in) so
        a narrower or smaller-input net starts with the same per-layer gain
        as the paper's: the paper's stds were tuned for its fan-ins, and at
        width 0.25 they shrink the signal until training stalls at ln(classes).
        """
        std = trained_std if self.init_scheme == "as_trained" else _PRINTED_INIT_STD
        if self.init_match_fan_in:
            std *= (paper_fan_in / fan_in) ** 0.5
        return nn.initializers.normal(std)

    def _post_conv(self, layer: layer_table.ConvLayer, x: Array) -> Array:
        """Activation, normalisation and pooling after `layer`, within each tower."""
        if layer.norm == "lrn1" and self.use_lrn and self.lrn1_before_relu:
            # ReLU commutes with max-pooling, so applying it after pool1
            # (as the 2012 code does) equals applying it right here
            # after LRN1; only LRN's position relative to ReLU matters.
            x = self._act(self._lrn(x, self.towers))
        else:
            x = self._act(x)
            if layer.norm is not None and self.use_lrn:
                x = self._lrn(x, self.towers)
                if layer.norm == "lrn2" and self.within_channel_norm:
                    x = layers.within_channel_norm(x)
        return self._pool(x) if layer.pool else x

    @nn.compact
    def __call__(self, images_nhwc: Array, *, train: bool) -> Array:
        if images_nhwc.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(
                f"AlexNet: images of shape {images_nhwc.shape[1:]} do not match "
                f"input_size={self.input_size} (expected ({self.input_size}, {self.input_size}, 3))"
            )
        dtype = jnp.dtype(self.dtype)
        # Logical sharding constraints (no-ops without a mesh and rules in
        # context): conv activations split their channels tower by tower,
        # dense ones their outputs. Each layer runs in a named scope of its
        # own so the compiled program's op names say which layer an op is in.
        x = nn.with_logical_constraint(images_nhwc.astype(dtype), (layers.CONV_BATCH, None, None, None))
        # Towers are independent in conv1 too (each GPU had its own 48 filters),
        # but conv1 reads all input channels, so it is an ordinary convolution.
        stack = layer_table.conv_stack(tuple(self.filters), self.cross_tower, self.extra_conv6)
        paper_in_features = 3
        for layer in stack:
            groups = self.towers if layer.grouped else 1
            k = layer.kernel
            paper_fan_in = k * k * paper_in_features // (2 if layer.grouped else 1)  # the paper's two towers
            fan_in = k * k * x.shape[-1] // groups
            paper_in_features = layer.paper_filters
            padding, _ = layer_table.conv_padding(x.shape[1], k, layer.stride)
            with jax.named_scope(layer.name):
                x = layers.TowerConv(
                    features=_scaled(layer.filters, self.width, self.towers),
                    kernel_size=(k, k),
                    strides=(layer.stride, layer.stride),
                    padding=padding,
                    towers=groups,
                    impl=self.tower_impl,
                    space_to_depth=layer.name == "conv1" and self._conv1_space_to_depth(),
                    gemm_wgrad=self._gemm_wgrad(),
                    kernel_init=self._init(layer.std, paper_fan_in, fan_in),
                    bias_init=nn.initializers.ones if layer.bias_one else nn.initializers.zeros,
                    dtype=dtype,
                    name=layer.name,
                )(x)
                x = nn.with_logical_constraint(self._post_conv(layer, x), layers.CONV_ACTIVATION)

        hidden = _scaled(_HIDDEN, self.width, self.towers)
        paper_side = final_feature_side(224)  # 6: pool5 of the paper's 224 input
        for name, paper_fan_in in (("fc6", paper_side * paper_side * stack[-1].paper_filters), ("fc7", _HIDDEN)):
            with jax.named_scope(name):
                x = x.reshape(x.shape[0], -1)  # fc6 flattens the last conv output (paper: 6*6*256)
                x = nn.Dense(
                    hidden,
                    kernel_init=layers.with_logical_axes(
                        self._init(0.01, paper_fan_in, x.shape[-1]), layers.DENSE_KERNEL_AXES
                    ),
                    bias_init=layers.with_logical_axes(nn.initializers.ones, layers.DENSE_BIAS_AXES),
                    dtype=dtype,
                    param_dtype=jnp.float32,
                    name=name,
                )(x)
                x = nn.with_logical_constraint(self._act(x), layers.DENSE_ACTIVATION)
                if name == "fc7":
                    # The last hidden layer (Figure 4's retrieval features); read it with
                    # `apply(..., mutable=["intermediates"])`, free otherwise.
                    self.sow("intermediates", "features", x)
                x = layers.Dropout(self.dropout_rate, self.dropout_scaling)(x, train=train)
        with jax.named_scope("fc8"):
            logits = nn.Dense(
                self.num_classes,
                kernel_init=layers.with_logical_axes(self._init(0.01, _HIDDEN, x.shape[-1]), layers.DENSE_KERNEL_AXES),
                bias_init=layers.with_logical_axes(nn.initializers.zeros, layers.DENSE_BIAS_AXES),
                dtype=dtype,
                param_dtype=jnp.float32,
                name="fc8",
            )(x)
            # Every device gets all logits: the softmax and metrics run locally.
            logits = nn.with_logical_constraint(logits, (layers.DENSE_BATCH, None))
        return logits.astype(jnp.float32)
