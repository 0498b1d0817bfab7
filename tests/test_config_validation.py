"""Every config field, given values of the wrong kind or out of range, is
either refused in one line naming it or makes a config that validates and
builds the model: nothing crashes further down."""

import functools
import json

import jax
import jax.numpy as jnp
import pytest

from alexnet_jax.runs import config_fields
from alexnet_jax.runs.validation import validate_config
from configs import default

FIELDS = sorted(config_fields.flat_fields(default.get_config()))


def _bad_values(value):
    if isinstance(value, tuple) and not value:  # a list of names, empty by default
        return [("bogus",), ("",), (0,), (-1,)]
    if isinstance(value, tuple):
        return [(), value[:-1], (*value, value[0]), tuple(0 for _ in value), tuple(-1 for _ in value)]
    return [0, -1, 10**9, 0.5, "", "bogus", True]


@functools.cache
def _builds(model_fields: str) -> None:
    """Traces the model's init (shapes only) from its fields."""
    from alexnet_jax.model import network

    fields = json.loads(model_fields)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    model = network.AlexNet(**fields)
    size = fields["input_size"]
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


@pytest.mark.parametrize("field", FIELDS)
def test_every_field_refuses_bad_values_in_one_line_or_works(tiny_config, field):
    parent, _, leaf = field.rpartition(".")
    for value in _bad_values(_get(tiny_config, field)):
        config = tiny_config.copy_and_resolve_references()
        config.mesh = (-1, 1)
        node = config[parent] if parent else config
        try:
            node[leaf] = value
        except (TypeError, ValueError):
            continue  # the wrong type: the flag parser refuses it, naming the flag
        try:
            validate_config(config)
        except ValueError as error:
            message = str(error)
            assert "\n" not in message and leaf in message, (field, value, message)
            continue
        _builds(json.dumps(config.model.to_dict(), sort_keys=True))


def _get(config, field):
    for part in field.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("optimizer.drop_epochs", (1, 1), "config.optimizer.drop_epochs=(1, 1) must be strictly increasing"),
        ("optimizer.layer_lr_changes", (("conv6", 1, 0.1),), "config.optimizer.layer_lr_changes=(('conv6', 1, 0.1),)"),
    ],
)
def test_repeated_drops_and_layers_the_network_lacks_are_refused(tiny_config, field, value, message):
    """A repeated drop epoch made one drop; a layer_lr_changes entry for
    conv6 on a network without it did nothing (config.frozen refused it)."""
    parent, _, leaf = field.rpartition(".")
    (tiny_config[parent] if parent else tiny_config)[leaf] = value
    with pytest.raises(ValueError) as error:
        validate_config(tiny_config)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert "'conv6', 'fc6'" not in str(error.value)  # the layers offered are this network's
    tiny_config.model.extra_conv6 = True  # a network with conv6 takes the layer
    if leaf == "layer_lr_changes":
        validate_config(tiny_config)
