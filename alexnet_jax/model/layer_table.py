"""The convolutional stack's layer table: what each convolution is (filters,
kernel, stride, towers, initialisation) and what follows it, as docs/paper.md
gives it, with the padding each one takes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from alexnet_jax.model import layers

# The paper's five convolutions' filter counts (both towers together).
PAPER_FILTERS = (96, 256, 384, 384, 256)


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One row of the convolutional stack: what the layer is and what follows it."""

    name: str
    filters: int  # both towers together, at width 1
    paper_filters: int  # the paper's count: init_match_fan_in's reference fan-in
    kernel: int
    stride: int
    grouped: bool  # reads only its own tower's channels
    bias_one: bool  # biases initialised to 1 (the paper: conv2, conv4, conv5)
    std: float  # the as-trained init std
    norm: Literal["lrn1", "lrn2", None]  # LRN1 (before or after the activation) or LRN2 (+ the 5x5 norm)
    pool: bool  # max-pooling after it


def conv_stack(
    filters: tuple[int, ...] = PAPER_FILTERS, cross_tower: bool = True, extra_conv6: bool = False
) -> tuple[ConvLayer, ...]:
    """The convolutions, input to output, for the model's fields.

    `cross_tower=False` makes conv3 a grouped convolution like conv4: the
    towers exchange nothing until fc6. `extra_conv6` adds the Fall 2011
    network's sixth convolution "over the last pooling layer"; the paper
    gives no size, so these are our choices: 3x3, stride 1, SAME padding
    (pool5's 6x6 stays 6x6, so fc6 keeps its fan-in), 256 filters, grouped
    like conv4 and conv5 (each tower's own, as the two-GPU layout would place
    it), biases 1 and the as-trained std 0.03 of conv3..conv5.
    """
    f1, f2, f3, f4, f5 = filters
    stack = [
        ConvLayer("conv1", f1, 96, 11, 4, False, False, 0.01, "lrn1", True),
        ConvLayer("conv2", f2, 256, 5, 1, True, True, 0.01, "lrn2", True),
        ConvLayer("conv3", f3, 384, 3, 1, not cross_tower, False, 0.03, None, False),
        ConvLayer("conv4", f4, 384, 3, 1, True, True, 0.03, None, False),
        ConvLayer("conv5", f5, 256, 3, 1, True, True, 0.03, None, True),
    ]
    if extra_conv6:
        stack.append(ConvLayer("conv6", 256, 256, 3, 1, True, True, 0.03, None, False))
    return tuple(stack)


def conv_padding(side: int, kernel: int, stride: int) -> tuple[Any, int]:
    """(padding, output side) of a stack convolution over a `side` x `side`
    input: a strided one (conv1) lets its last window hang past the far edge
    into zeros, as the 2012 code did; the others keep the size ("SAME")."""
    if stride == 1:
        return "SAME", side
    out = layers.conv_output_size(side, kernel, stride)
    pad = (out - 1) * stride + kernel - side
    return ((0, pad), (0, pad)), out
