"""Parameters carry their logical axes on the layers: every parameter and
optimiser buffer lands where the former regex path table put it, under every
scheme, and no flax box reaches the train state or `Module.init`'s output."""

import re

import jax
import numpy as np
import pytest
from flax import linen as nn
from flax.core import meta
from jax.sharding import PartitionSpec as P

from alexnet_jax.model import layers
from alexnet_jax.parallel import sharding
from alexnet_jax.train import steps

# The table parameters were laid out by before their layers named their axes
# (alexnet_jax/parallel/sharding.py up to issue 27), kept here as the reference.
_OLD_PARAM_AXES = (
    (r"conv\d+/kernel$", (None, None, None, layers.CONV_CHANNELS)),
    (r"conv\d+/bias$", (layers.CONV_CHANNELS,)),
    (r"fc\d+/kernel$", (None, layers.HIDDEN)),
    (r"fc\d+/bias$", (layers.HIDDEN,)),
)


def _old_path_name(path: tuple) -> str:
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def _old_spec(path: tuple, shape: tuple[int, ...], mesh, scheme: str) -> P:
    name, ndim = _old_path_name(path), len(shape)
    axes = next((a for pattern, a in _OLD_PARAM_AXES if re.search(pattern, name) and len(a) == ndim), (None,) * ndim)
    spec = nn.logical_to_mesh_axes(axes, sharding.SCHEMES[scheme])
    return P(*[s if s is None or size % sharding._mesh_size(mesh, s) == 0 else None for s, size in zip(spec, shape)])


def _config(variant=()):
    from configs import digits

    config = digits.get_config()
    config.model.width = 0.125
    for field, value in variant:
        parent, _, leaf = field.rpartition(".")
        (config[parent] if parent else config)[leaf] = value
    return config


VARIANTS = [
    (),
    (("model.towers", 1),),
    (("model.extra_conv6", True), ("model.cross_tower", False)),
    (("model.num_classes", 7),),  # fc8 does not divide over 'model': replicated
    (("frozen", ("conv1",)), ("optimizer.layer_lr_changes", (("fc8", 1, 0.1),))),  # another optimiser state
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mesh_spec", [(8, 1), (4, 2), (1, 2), (2, 4)])
def test_every_leaf_is_placed_as_the_old_table_placed_it(variant, mesh_spec):
    mesh = sharding.make_mesh(mesh_spec)
    for scheme in sharding.SCHEMES:
        config = _config(variant)
        config.model_parallel = scheme
        model = steps.create_model(config)
        state = steps.abstract_train_state(config, model, 89, mesh)
        params = steps.abstract_params(config, model, mesh)
        for tree in (state, params):
            leaves = jax.tree_util.tree_leaves_with_path(tree)
            assert any(leaf.sharding.spec != P() for _, leaf in leaves)  # the comparison means something
            for path, leaf in leaves:
                want = _old_spec(path, leaf.shape, mesh, scheme)
                assert leaf.sharding.spec == want, (scheme, jax.tree_util.keystr(path))
        # A state without its layers' names (all P()) would be replicated: the state's own names are used.
        again = sharding.state_shardings(state, mesh, scheme)
        assert jax.tree.map(lambda s: s.spec, again) == jax.tree.map(lambda leaf: leaf.sharding.spec, state)


def test_layers_box_their_parameters_only_with_rules_in_context():
    model = steps.create_model(_config())
    x = np.zeros((1, 64, 64, 3), np.float32)
    plain = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
    assert not any(meta.is_axis_metadata(v) for v in jax.tree.leaves(plain, is_leaf=meta.is_axis_metadata))
    with nn.logical_axis_rules(sharding.SCHEMES["towers"]):
        boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
    assert isinstance(boxed["conv2"]["kernel"], nn.LogicallyPartitioned)
    assert nn.get_partition_spec(boxed)["conv2"]["kernel"] == P(None, None, None, layers.CONV_CHANNELS)
    assert nn.get_partition_spec(boxed)["fc8"]["bias"] == P(layers.HIDDEN)
    assert jax.tree.structure(nn.unbox(boxed)) == jax.tree.structure(plain)


def test_the_initial_state_holds_plain_arrays_shaped_as_model_init():
    """What checkpoints save (create_train_state compiles this same init): no
    boxes, and the tree, names, shapes and dtypes of `Module.init`'s
    parameters (their values: test_train's golden step, test_sharding)."""
    config = _config()
    model = steps.create_model(config)
    state = steps.abstract_train_state(config, model, 89, sharding.make_mesh((4, 2)))
    leaves = jax.tree.leaves(state, is_leaf=meta.is_axis_metadata)
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
    x = np.zeros((1, 64, 64, 3), np.float32)
    want = jax.eval_shape(lambda: model.init(jax.random.key(config.seed), x, train=False))["params"]
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state.params)
    assert jax.tree_util.tree_leaves_with_path(shapes) == jax.tree_util.tree_leaves_with_path(want)
