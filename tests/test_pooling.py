"""Scatter-free max-pooling against a NumPy reference and XLA's
select-and-scatter, ties included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.model import pooling


def _max_pool_reference(x: np.ndarray, window: int, stride: int, grad_out: np.ndarray):
    """NumPy max-pooling and its gradient: each output's gradient to the
    first maximum of its window in row-major order (XLA's select-and-scatter)."""
    n, h, w, c = x.shape
    out_h, out_w = (h - window) // stride + 1, (w - window) // stride + 1
    pooled = np.empty((n, out_h, out_w, c), x.dtype)
    grad_x = np.zeros(x.shape, np.float64)
    for b, y, xo, ch in np.ndindex(n, out_h, out_w, c):
        patch = x[b, y * stride : y * stride + window, xo * stride : xo * stride + window, ch]
        i, j = np.unravel_index(np.argmax(patch), patch.shape)  # argmax: the first maximum
        pooled[b, y, xo, ch] = patch[i, j]
        grad_x[b, y * stride + i, xo * stride + j, ch] += grad_out[b, y, xo, ch]
    return pooled, grad_x


@pytest.mark.parametrize("window,stride,shape", [(3, 2, (2, 13, 15, 4)), (2, 2, (1, 9, 8, 3)), (3, 1, (1, 6, 7, 2))])
def test_max_pool_taps_matches_reference_and_xla_with_ties(window, stride, shape):
    """The forward pass is exact and the gradient goes where XLA's does, also
    where a window holds its maximum twice (rounded values, ReLU's zeros)."""
    from flax import linen as nn

    rng = np.random.default_rng(0)
    x = np.maximum(np.round(rng.normal(size=shape), 1), 0).astype(np.float32)  # many ties
    pooled_shape = nn.max_pool(jnp.asarray(x), (window, window), strides=(stride, stride)).shape
    grad_out = rng.normal(size=pooled_shape).astype(np.float32)
    want_pooled, want_grad = _max_pool_reference(x, window, stride, grad_out)

    pooled, vjp = jax.vjp(lambda v: pooling.max_pool_taps(v, window, stride), jnp.asarray(x))
    np.testing.assert_array_equal(pooled, want_pooled)
    np.testing.assert_allclose(vjp(jnp.asarray(grad_out))[0], want_grad, rtol=1e-6, atol=1e-6)
    _, xla_vjp = jax.vjp(lambda v: nn.max_pool(v, (window, window), strides=(stride, stride)), jnp.asarray(x))
    np.testing.assert_allclose(vjp(jnp.asarray(grad_out))[0], xla_vjp(jnp.asarray(grad_out))[0], rtol=1e-6, atol=1e-6)


def test_max_pool_taps_keeps_bfloat16():
    x = jax.random.normal(jax.random.key(0), (2, 13, 13, 8), jnp.bfloat16)
    pooled, vjp = jax.vjp(lambda v: pooling.max_pool_taps(v, 3, 2), x)
    assert pooled.dtype == jnp.bfloat16 and vjp(jnp.ones_like(pooled))[0].dtype == jnp.bfloat16
