"""The convolutions computed another way (space-to-depth, GEMM kernel
gradients) against the plain strided lax.conv: outputs and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.model import conv_kernels


def _direct_conv(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize(
    "x_shape, kernel_shape, strides, padding",
    [
        ((2, 224, 224, 3), (11, 11, 3, 8), (4, 4), ((0, 3), (0, 3))),  # conv1, 2012 code's far-edge padding
        ((2, 17, 19, 5), (7, 7, 5, 4), (2, 2), ((3, 3), (3, 3))),  # odd sizes, symmetric padding
        ((1, 13, 13, 2), (3, 3, 2, 3), (4, 4), ((0, 0), (0, 0))),  # the last rows no window reads
        ((1, 12, 10, 3), (5, 4, 3, 2), (3, 2), ((2, 1), (0, 2))),  # unequal strides and edges
        ((1, 9, 9, 4), (3, 3, 4, 5), (1, 1), "SAME"),  # stride 1: 1x1 blocks
        ((1, 15, 15, 3), (5, 5, 3, 2), (2, 2), "SAME"),
    ],
)
@pytest.mark.parametrize("variant", ["space_to_depth", "gemm_wgrad", "space_to_depth+gemm_wgrad"])
def test_conv_variants_equal_direct_conv(variant, x_shape, kernel_shape, strides, padding):
    """Same outputs and gradients (w.r.t. input and kernel) as the strided
    lax.conv, to float32 rounding: only the order of the sums differs."""
    fast_conv = {
        "space_to_depth": conv_kernels.space_to_depth_conv,
        "gemm_wgrad": conv_kernels.gemm_wgrad_conv,
        "space_to_depth+gemm_wgrad": functools.partial(conv_kernels.space_to_depth_conv, gemm_wgrad=True),
    }[variant]
    rng = np.random.RandomState(4)
    x = jnp.asarray(rng.normal(size=x_shape).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=kernel_shape).astype(np.float32))
    want = _direct_conv(x, kernel, strides, padding)
    got = jax.jit(fast_conv, static_argnums=(2, 3))(x, kernel, strides, padding)
    assert got.shape == want.shape
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6 * scale)

    cotangent = jnp.asarray(rng.normal(size=want.shape).astype(np.float32))

    def grads(conv):
        return jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k, strides, padding) * cotangent), argnums=(0, 1)))(
            x, kernel
        )

    for got_grad, want_grad in zip(grads(fast_conv), grads(_direct_conv)):
        assert got_grad.shape == want_grad.shape
        scale = float(np.abs(want_grad).max())
        np.testing.assert_allclose(np.asarray(got_grad), np.asarray(want_grad), rtol=1e-5, atol=1e-6 * scale)
