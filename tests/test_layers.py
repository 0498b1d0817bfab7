"""LRN, the within-channel norm and tower convolutions against independent
NumPy / plain-lax references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.model import layers


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
    the as-trained LRN (docs/paper.md); an independent implementation to agree with."""
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
