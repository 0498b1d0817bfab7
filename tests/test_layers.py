"""LRN, the within-channel norm, tower and space-to-depth convolutions
against independent NumPy / plain-lax references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import layers


def lrn_reference(a, towers, k, n, alpha, beta, alpha_over_n):
    """The paper's formula, channel by channel, with explicit loops."""
    a = np.asarray(a, np.float64)
    channels = a.shape[-1]
    per_tower = channels // towers
    scale = alpha / n if alpha_over_n else alpha
    out = np.empty_like(a)
    for c in range(channels):
        start = (c // per_tower) * per_tower
        lo = max(start, c - n // 2)
        hi = min(start + per_tower - 1, c + n // 2)
        total = np.sum(a[..., lo : hi + 1] ** 2, axis=-1)
        out[..., c] = a[..., c] / (k + scale * total) ** beta
    return out


@pytest.mark.parametrize("towers", [1, 2])
@pytest.mark.parametrize("alpha_over_n", [True, False])
@pytest.mark.parametrize("beta", [0.75, 0.6])  # 0.75 takes the rsqrt path, others pow
def test_lrn_matches_reference(towers, alpha_over_n, beta):
    # Large values so the normalisation term matters (alpha is tiny).
    x = np.random.RandomState(0).normal(0, 40, size=(2, 5, 5, 16)).astype(np.float32)
    got = layers.local_response_norm(
        jnp.asarray(x), towers=towers, k=2.0, n=5, alpha=1e-4, beta=beta, alpha_over_n=alpha_over_n
    )
    want = lrn_reference(x, towers, 2.0, 5, 1e-4, beta, alpha_over_n)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_lrn_matches_tensorflow_convention():
    """TF's local_response_normalization(depth_radius=2, alpha=2e-5, bias=2) is
    the as-trained LRN (PAPER.md); an independent implementation to agree with."""
    tf = pytest.importorskip("tensorflow")
    x = np.random.RandomState(1).normal(0, 50, size=(1, 4, 4, 48)).astype(np.float32)
    want = tf.nn.local_response_normalization(x, depth_radius=2, bias=2.0, alpha=2e-5, beta=0.75).numpy()
    got = layers.local_response_norm(jnp.asarray(x), towers=1, alpha_over_n=True)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_within_channel_norm_matches_reference():
    x = np.random.RandomState(2).normal(0, 20, size=(1, 6, 7, 3)).astype(np.float32)
    got = np.asarray(layers.within_channel_norm(jnp.asarray(x), size=5, scale=1e-3, beta=0.75, k=1.0))
    padded = np.pad(x.astype(np.float64) ** 2, ((0, 0), (2, 2), (2, 2), (0, 0)))
    want = np.empty_like(x, dtype=np.float64)
    for y in range(6):
        for xx in range(7):
            total = padded[:, y : y + 5, xx : xx + 5, :].sum(axis=(1, 2))
            want[:, y, xx, :] = x[:, y, xx, :] / (1.0 + 1e-3 / 25 * total) ** 0.75
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _plain_lrn(a, towers, k, n, alpha, beta):
    """The formula in jnp, channel by channel, for autodiff to differentiate."""
    per_tower = a.shape[-1] // towers
    out = []
    for c in range(a.shape[-1]):
        start = (c // per_tower) * per_tower
        lo, hi = max(start, c - n // 2), min(start + per_tower - 1, c + (n - 1) // 2)
        out.append(a[..., c] / (k + alpha / n * jnp.sum(a[..., lo : hi + 1] ** 2, axis=-1)) ** beta)
    return jnp.stack(out, axis=-1)


def _plain_within_channel_norm(a, size, scale, beta, k):
    half = size // 2
    padded = jnp.pad(a**2, ((0, 0), (half, size - 1 - half), (half, size - 1 - half), (0, 0)))
    h, w = a.shape[1:3]
    sums = sum(padded[:, i : i + h, j : j + w, :] for i in range(size) for j in range(size))
    return a / (k + scale / size**2 * sums) ** beta


@pytest.mark.parametrize("towers, n, beta", [(1, 5, 0.75), (2, 5, 0.75), (2, 4, 0.6)])
def test_lrn_gradient_matches_autodiff_of_the_formula(towers, n, beta):
    """The hand-written backward pass (layers._divisive_norm) against JAX's
    autodiff of the plain formula, including an even window (asymmetric
    padding) and the pow path."""
    rng = np.random.RandomState(4)
    x = jnp.asarray(rng.normal(0, 40, size=(2, 3, 4, 12)).astype(np.float32))
    g = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))
    ours = jax.vjp(lambda v: layers.local_response_norm(v, towers=towers, n=n, alpha=1e-3, beta=beta), x)[1](g)[0]
    plain = jax.vjp(lambda v: _plain_lrn(v, towers, 2.0, n, 1e-3, beta), x)[1](g)[0]
    np.testing.assert_allclose(np.asarray(ours), np.asarray(plain), rtol=1e-4, atol=1e-6)


def test_within_channel_norm_gradient_matches_autodiff_of_the_formula():
    rng = np.random.RandomState(5)
    x = jnp.asarray(rng.normal(0, 20, size=(2, 6, 7, 3)).astype(np.float32))
    g = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))
    ours = jax.vjp(lambda v: layers.within_channel_norm(v, size=5, scale=0.1), x)[1](g)[0]
    plain = jax.vjp(lambda v: _plain_within_channel_norm(v, 5, 0.1, 0.75, 1.0), x)[1](g)[0]
    np.testing.assert_allclose(np.asarray(ours), np.asarray(plain), rtol=1e-4, atol=1e-6)


def test_norms_keep_bfloat16():
    x = jnp.asarray(np.random.RandomState(6).normal(0, 30, size=(1, 5, 5, 8)), jnp.bfloat16)
    for norm in (lambda v: layers.local_response_norm(v, towers=2), layers.within_channel_norm):
        out, vjp = jax.vjp(norm, x)
        assert out.dtype == jnp.bfloat16 and vjp(jnp.ones_like(out))[0].dtype == jnp.bfloat16


@pytest.mark.parametrize("impl", ["split", "grouped"])
def test_tower_conv_equals_two_half_convs(impl):
    """Both implementations equal two explicit half-width convolutions that
    each read only their own tower's channels, with the same weights."""
    rng = np.random.RandomState(3)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 8)).astype(np.float32))
    conv = layers.TowerConv(features=6, kernel_size=(3, 3), towers=2, impl=impl)
    variables = conv.init(jax.random.key(0), x)
    kernel = variables["params"]["kernel"]
    assert kernel.shape == (3, 3, 4, 6)
    variables = {"params": {"kernel": kernel, "bias": jnp.arange(6.0)}}

    def half(inputs, weights):
        return jax.lax.conv_general_dilated(inputs, weights, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    want = jnp.concatenate([half(x[..., :4], kernel[..., :3]), half(x[..., 4:], kernel[..., 3:])], axis=-1)
    want = want + jnp.arange(6.0)
    np.testing.assert_allclose(np.asarray(conv.apply(variables, x)), np.asarray(want), rtol=1e-5, atol=1e-5)


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
        "space_to_depth": layers.space_to_depth_conv,
        "gemm_wgrad": layers.gemm_wgrad_conv,
        "space_to_depth+gemm_wgrad": functools.partial(layers.space_to_depth_conv, gemm_wgrad=True),
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


@pytest.mark.parametrize("towers", [1, 2])
def test_tower_conv_space_to_depth_keeps_params_and_outputs(towers):
    """Same parameter shapes and outputs as the direct conv, per tower too."""
    rng = np.random.RandomState(5)
    x = jnp.asarray(rng.normal(size=(2, 23, 23, 4)).astype(np.float32))
    fields = dict(features=6, kernel_size=(5, 5), strides=(3, 3), padding=((0, 2), (0, 2)), towers=towers)
    direct = layers.TowerConv(**fields)
    variables = direct.init(jax.random.key(0), x)
    s2d = layers.TowerConv(**fields, space_to_depth=True)
    assert jax.tree.map(jnp.shape, s2d.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(
        np.asarray(s2d.apply(variables, x)), np.asarray(direct.apply(variables, x)), rtol=1e-5, atol=1e-6
    )


def test_tower_conv_space_to_depth_rejects_grouped():
    conv = layers.TowerConv(features=4, kernel_size=(3, 3), towers=2, impl="grouped", space_to_depth=True)
    with pytest.raises(ValueError, match="space_to_depth"):
        conv.init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))


def test_conv1_output_size_as_in_2012_code():
    assert layers.conv_output_size(224, 11, 4) == 55  # the last window hangs past the edge
    assert layers.conv_output_size(227, 11, 4) == 55  # Caffe's crop


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

    pooled, vjp = jax.vjp(lambda v: layers.max_pool_taps(v, window, stride), jnp.asarray(x))
    np.testing.assert_array_equal(pooled, want_pooled)
    np.testing.assert_allclose(vjp(jnp.asarray(grad_out))[0], want_grad, rtol=1e-6, atol=1e-6)
    _, xla_vjp = jax.vjp(lambda v: nn.max_pool(v, (window, window), strides=(stride, stride)), jnp.asarray(x))
    np.testing.assert_allclose(vjp(jnp.asarray(grad_out))[0], xla_vjp(jnp.asarray(grad_out))[0], rtol=1e-6, atol=1e-6)


def test_max_pool_taps_keeps_bfloat16():
    x = jax.random.normal(jax.random.key(0), (2, 13, 13, 8), jnp.bfloat16)
    pooled, vjp = jax.vjp(lambda v: layers.max_pool_taps(v, 3, 2), x)
    assert pooled.dtype == jnp.bfloat16 and vjp(jnp.ones_like(pooled))[0].dtype == jnp.bfloat16
