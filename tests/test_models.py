"""AlexNet's shapes, parameter count, initialisation and switches."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax.model import network


def _param_shapes(model, size=224):
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    return variables["params"]


def test_paper_parameter_count():
    params = _param_shapes(network.AlexNet())
    assert sum(x.size for x in jax.tree.leaves(params)) == 60_965_224


def test_paper_layer_table():
    params = _param_shapes(network.AlexNet())
    shapes = {name: layer["kernel"].shape for name, layer in params.items()}
    assert shapes == {
        "conv1": (11, 11, 3, 96),
        "conv2": (5, 5, 48, 256),  # reads only its own tower's 48 channels
        "conv3": (3, 3, 256, 384),  # reads both towers
        "conv4": (3, 3, 192, 384),
        "conv5": (3, 3, 192, 256),
        "fc6": (9216, 4096),  # 6 x 6 x 256
        "fc7": (4096, 4096),
        "fc8": (4096, 1000),
    }


def test_ungrouped_variant_reads_all_channels():
    params = _param_shapes(network.AlexNet(towers=1))
    assert params["conv2"]["kernel"].shape == (5, 5, 96, 256)
    assert sum(x.size for x in jax.tree.leaves(params)) == 62_378_344


def test_paper_output_shape():
    out = jax.eval_shape(
        lambda: network.AlexNet().init_with_output(jax.random.key(0), jnp.zeros((2, 224, 224, 3)), train=False)[0]
    )
    assert out.shape == (2, 1000) and out.dtype == jnp.float32


@pytest.mark.parametrize("pool_window", [2, 3])
def test_feature_map_is_6x6_for_both_poolings(pool_window):
    assert network.final_feature_side(224, pool_window) == 6


def test_initialisation_as_trained():
    model = network.AlexNet(num_classes=10, input_size=64, width=0.5)
    params = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)["params"]
    for name, std in [
        ("conv1", 0.01),
        ("conv2", 0.01),
        ("conv3", 0.03),
        ("conv4", 0.03),
        ("conv5", 0.03),
        ("fc7", 0.01),
    ]:
        assert np.std(params[name]["kernel"]) == pytest.approx(std, rel=0.1), name
    for name in ["conv2", "conv4", "conv5", "fc6", "fc7"]:
        np.testing.assert_array_equal(params[name]["bias"], 1.0)
    for name in ["conv1", "conv3", "fc8"]:
        np.testing.assert_array_equal(params[name]["bias"], 0.0)


def test_printed_initialisation_is_001_everywhere():
    model = network.AlexNet(num_classes=10, input_size=64, width=0.5, init_scheme="printed")
    params = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)["params"]
    assert np.std(params["conv4"]["kernel"]) == pytest.approx(0.01, rel=0.1)


def test_fan_in_matching_is_identity_at_paper_size():
    a = _param_shapes(network.AlexNet())
    plain = network.AlexNet().init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
    matched = network.AlexNet(init_match_fan_in=True).init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
    assert jax.tree.structure(a) == jax.tree.structure(plain["params"])
    for x, y in zip(jax.tree.leaves(plain), jax.tree.leaves(matched)):
        np.testing.assert_allclose(x, y, rtol=1e-6)


SMALL = dict(num_classes=10, input_size=64, width=0.25)


@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"use_lrn": False},
        {"pool_window": 2},
        {"towers": 1},
        {"activation": "tanh"},
        {"lrn_alpha_over_n": False, "lrn1_before_relu": False, "within_channel_norm": False},
        {"tower_impl": "grouped"},
        {"dtype": "bfloat16"},
        {"conv1_impl": "space_to_depth"},
        {"conv1_impl": "space_to_depth", "tower_impl": "grouped", "dtype": "bfloat16"},
        {"conv_wgrad": "gemm", "conv1_impl": "space_to_depth", "dtype": "bfloat16"},
    ],
)
def test_switches_run(switches):
    model = network.AlexNet(**SMALL, **switches)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3)) * 50
    variables = model.init(jax.random.key(0), x, train=False)
    logits = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


def test_tower_impls_agree():
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3)) * 50
    split = network.AlexNet(**SMALL, tower_impl="split")
    grouped = network.AlexNet(**SMALL, tower_impl="grouped")
    variables = split.init(jax.random.key(0), x, train=False)
    np.testing.assert_allclose(
        split.apply(variables, x, train=False), grouped.apply(variables, x, train=False), rtol=1e-4, atol=1e-5
    )


def test_conv1_space_to_depth_gives_the_same_logits():
    """At the paper's input size (conv1's far-edge padding) with the same
    parameters: only conv1's order of summation differs."""
    x = jax.random.normal(jax.random.key(1), (2, 224, 224, 3)) * 50
    direct = network.AlexNet(num_classes=10, width=0.25, conv1_impl="direct")
    variables = direct.init(jax.random.key(0), x, train=False)
    s2d = network.AlexNet(num_classes=10, width=0.25, conv1_impl="space_to_depth")
    want = direct.apply(variables, x, train=False)
    np.testing.assert_allclose(s2d.apply(variables, x, train=False), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def _assert_same_gradients(plain: dict, switched: dict) -> None:
    """Every parameter's gradient of the model with `switched` fields equals
    that with `plain` ones, to float32 summation-order tolerance."""
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3)) * 50
    labels = jnp.array([1, 7])
    grads = []
    for fields in (plain, switched):
        model = network.AlexNet(**{**SMALL, **fields})
        variables = model.init(jax.random.key(0), x, train=False)

        def loss(params, model=model):
            logits = model.apply({"params": params}, x, train=False)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        grads.append(jax.jit(jax.grad(loss))(variables["params"]))  # one program, as the step compiles it
    for path, want in jax.tree_util.tree_leaves_with_path(grads[0]):
        got = functools.reduce(lambda tree, key: tree[key.key], path, grads[1])
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("tower_impl", ["split", "grouped"])
def test_gemm_kernel_gradients_equal_xla_ones(tower_impl):
    """`conv_wgrad="gemm"` changes how the kernel gradients are computed, not
    what they are: every parameter's gradient matches XLA's own."""
    _assert_same_gradients(
        {"tower_impl": tower_impl, "conv_wgrad": "xla"}, {"tower_impl": tower_impl, "conv_wgrad": "gemm"}
    )


def test_pooling_by_taps_gives_xla_gradients():
    """`pool_impl="taps"` trains the same network as
    `nn.max_pool`: every parameter's gradient matches."""
    _assert_same_gradients({"pool_impl": "xla"}, {"pool_impl": "taps"})


@pytest.mark.parametrize("pool_impl, scatters", [("auto", False), ("xla", True), ("taps", False)])
def test_pooling_auto_takes_taps_on_cpu(pool_impl, scatters):
    """On the CPU backend the default pooling gradient is max_pool_taps': the
    compiled gradient has no select-and-scatter (nn.max_pool's has one)."""
    x = jnp.zeros((2, 64, 64, 3))
    model = network.AlexNet(**SMALL, pool_impl=pool_impl)
    params = model.init(jax.random.key(0), x, train=False)["params"]
    grad = jax.jit(jax.grad(lambda p: model.apply({"params": p}, x, train=False).sum()))
    assert ("select-and-scatter" in grad.lower(params).as_text(dialect="hlo")) == scatters


def test_lrn_switch_changes_output():
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3)) * 50
    with_lrn = network.AlexNet(**SMALL)
    variables = with_lrn.init(jax.random.key(0), x, train=False)
    without = network.AlexNet(**SMALL, use_lrn=False)
    assert not np.allclose(with_lrn.apply(variables, x, train=False), without.apply(variables, x, train=False))


def test_wrong_input_size_is_rejected():
    with pytest.raises(ValueError, match="input_size=64"):
        network.AlexNet(**SMALL).init(jax.random.key(0), jnp.zeros((1, 72, 72, 3)), train=False)


def _count(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


def test_one_gpu_net_of_section_3_2():
    """Half the kernels in each convolution except the last, one tower, same dense layers."""
    params = _param_shapes(network.AlexNet(towers=1, filters=(48, 128, 192, 192, 256)))
    # Counted by hand: kernels k*k*in*out plus out biases, every layer reading all channels.
    convs = [(11, 3, 48), (5, 48, 128), (3, 128, 192), (3, 192, 192), (3, 192, 256)]
    expected = sum(k * k * cin * cout + cout for k, cin, cout in convs)
    expected += (9216 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    assert _count(params) == expected == 59_798_312
    assert params["conv3"]["kernel"].shape == (3, 3, 128, 192)


def test_no_cross_tower_makes_conv3_read_its_own_tower():
    params = _param_shapes(network.AlexNet(cross_tower=False))
    assert params["conv3"]["kernel"].shape == (3, 3, 128, 384)  # 256 channels, two towers
    assert _count(params) == 60_965_224 - 3 * 3 * 128 * 384


def test_extra_conv6_over_the_last_pooling_layer():
    params = _param_shapes(network.AlexNet(extra_conv6=True))
    assert params["conv6"]["kernel"].shape == (3, 3, 128, 256)  # grouped like conv5: our choice
    assert params["fc6"]["kernel"].shape == (9216, 4096)  # SAME padding keeps pool5's 6x6
    assert _count(params) == 60_965_224 + 3 * 3 * 128 * 256 + 256
    assert network.LAYERS == ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc6", "fc7", "fc8")
