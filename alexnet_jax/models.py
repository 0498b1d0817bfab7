"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) as a Flax linen module.

The layer table, LRN constants and initialisation follow ../shared/PAPER.md.
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
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

from alexnet_jax import layers

Array = jax.Array

# (name, per-net filters at width 1, kernel, stride, grouped, bias-one, init std as trained)
_CONVS = (
    ("conv1", 96, 11, 4, False, False, 0.01),
    ("conv2", 256, 5, 1, True, True, 0.01),
    ("conv3", 384, 3, 1, False, False, 0.03),
    ("conv4", 384, 3, 1, True, True, 0.03),
    ("conv5", 256, 3, 1, True, True, 0.03),
)
_HIDDEN = 4096
# The layers with parameters, input to output: what init_reset and frozen name.
LAYERS = (*(conv[0] for conv in _CONVS), "fc6", "fc7", "fc8")
_PRINTED_INIT_STD = 0.01


def final_feature_side(input_size: int, pool_window: int = 3, pool_stride: int = 2) -> int:
    """Spatial side after pool5 (6 for the paper's 224); < 1 if too small."""
    side = layers.conv_output_size(input_size, 11, 4)
    for _ in range(3):  # pool1, pool2, pool5; the convs in between keep the size
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

    Attributes mirror `config.model`: see configs/default.py for what each
    does. `__call__` takes NHWC images of shape (batch, input_size,
    input_size, 3), already mean-subtracted, and returns float32 logits.
    """

    num_classes: int = 1000
    input_size: int = 224
    width: float = 1.0
    towers: int = 2
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
    init_scheme: Literal["as_trained", "printed"] = "as_trained"
    init_match_fan_in: bool = False
    conv1_impl: Literal["auto", "direct", "space_to_depth"] = "auto"
    conv_wgrad: Literal["auto", "xla", "gemm"] = "auto"
    dtype: str = "float32"

    def _conv1_space_to_depth(self) -> bool:
        """Whether conv1 runs as `layers.space_to_depth_conv`. Same numbers
        either way; "auto" takes it where it is faster (BENCHMARKS.md): on
        GPUs, whose cuDNN runs conv1's 3 input channels without tensor
        cores, and not on XLA:CPU, where it is slower."""
        if self.conv1_impl == "auto":
            return jax.default_backend() == "gpu"
        return self.conv1_impl == "space_to_depth"

    def _gemm_wgrad(self) -> bool:
        """Whether the convolutions' kernel gradients are matrix products
        (`layers.gemm_wgrad_conv`). Same numbers either way; "auto" takes it
        on XLA:CPU, whose own kernel-gradient convolutions are slow there
        (BENCHMARKS.md), and leaves GPUs and TPUs to XLA."""
        if self.conv_wgrad == "auto":
            return jax.default_backend() == "cpu"
        return self.conv_wgrad == "gemm"

    def _act(self, x: Array) -> Array:
        return nn.relu(x) if self.activation == "relu" else jnp.tanh(x)

    def _pool(self, x: Array) -> Array:
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

    def _post_conv(self, name: str, x: Array) -> Array:
        """Activation, normalisation and pooling after `name`, within each tower."""
        if name == "conv1":
            if self.use_lrn and self.lrn1_before_relu:
                # ReLU commutes with max-pooling, so applying it after pool1
                # (as the 2012 code does) equals applying it right here
                # after LRN1; only LRN's position relative to ReLU matters.
                x = self._act(self._lrn(x, self.towers))
            elif self.use_lrn:
                x = self._lrn(self._act(x), self.towers)
            else:
                x = self._act(x)
            return self._pool(x)
        x = self._act(x)
        if name == "conv2":
            if self.use_lrn:
                x = self._lrn(x, self.towers)
                if self.within_channel_norm:
                    x = layers.within_channel_norm(x)
            return self._pool(x)
        return self._pool(x) if name == "conv5" else x

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
        paper_in_features = 3
        for name, features, kernel, stride, grouped, bias_one, std in _CONVS:
            groups = self.towers if grouped else 1
            paper_fan_in = kernel * kernel * paper_in_features // (2 if grouped else 1)
            fan_in = kernel * kernel * x.shape[-1] // groups
            paper_in_features = features
            if name == "conv1":
                # The 2012 code lets the last window hang past the edge into zeros.
                out = layers.conv_output_size(x.shape[1], kernel, stride)
                pad = (out - 1) * stride + kernel - x.shape[1]
                padding = ((0, pad), (0, pad))
            else:
                padding = "SAME"
            with jax.named_scope(name):
                x = layers.TowerConv(
                    features=_scaled(features, self.width, self.towers),
                    kernel_size=(kernel, kernel),
                    strides=(stride, stride),
                    padding=padding,
                    towers=groups,
                    impl=self.tower_impl,
                    space_to_depth=name == "conv1" and self._conv1_space_to_depth(),
                    gemm_wgrad=self._gemm_wgrad(),
                    kernel_init=self._init(std, paper_fan_in, fan_in),
                    bias_init=nn.initializers.ones if bias_one else nn.initializers.zeros,
                    dtype=dtype,
                    name=name,
                )(x)
                x = nn.with_logical_constraint(self._post_conv(name, x), layers.CONV_ACTIVATION)

        hidden = _scaled(_HIDDEN, self.width, self.towers)
        for name, paper_fan_in in (("fc6", 6 * 6 * 256), ("fc7", _HIDDEN)):
            with jax.named_scope(name):
                x = x.reshape(x.shape[0], -1)  # fc6 flattens pool5's output (fan-in 6*6*256)
                x = nn.Dense(
                    hidden,
                    kernel_init=self._init(0.01, paper_fan_in, x.shape[-1]),
                    bias_init=nn.initializers.ones,
                    dtype=dtype,
                    param_dtype=jnp.float32,
                    name=name,
                )(x)
                x = nn.with_logical_constraint(self._act(x), layers.DENSE_ACTIVATION)
                if name == "fc7":
                    # The last hidden layer (Figure 4's retrieval features); read it with
                    # `apply(..., mutable=["intermediates"])`, free otherwise.
                    self.sow("intermediates", "features", x)
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        with jax.named_scope("fc8"):
            logits = nn.Dense(
                self.num_classes,
                kernel_init=self._init(0.01, _HIDDEN, x.shape[-1]),
                dtype=dtype,
                param_dtype=jnp.float32,
                name="fc8",
            )(x)
            # Every device gets all logits: the softmax and metrics run locally.
            logits = nn.with_logical_constraint(logits, (layers.DENSE_BATCH, None))
        return logits.astype(jnp.float32)
