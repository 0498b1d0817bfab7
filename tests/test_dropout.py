"""Dropout as the paper computes it (`dropout_scaling="test"`) against flax's
inverted form (`"train"`), docs/paper.md's Dropout section.

Dropout sits on fc6's and fc7's outputs, so the layers that read dropped-out
units are fc7 and fc8. With the same mask m (0 or 1 per unit) on an input a:
the paper's layer computes W_p (m a) at training and W_p (a / 2) at test, the
inverted one W_i (2 m a) and W_i a. With W_i = W_p / 2 both compute the same
function at test and at training, so the gradient g of the loss with respect
to the layer's output is the same, and the kernel gradients are
dL/dW_p = (m a) g and dL/dW_i = (2 m a) g = 2 dL/dW_p: the paper's form gives
fc7 and fc8 half the inverted form's gradient. An SGD step of rate e on W_i
moves the paper-equivalent weights 2 W_i by 2 e dL/dW_i = 4 e dL/dW_p: the
inverted form is the paper's form with fc7 and fc8 started 2x larger and
trained at 4x the rate.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from alexnet_jax.model import layers, network
from alexnet_jax.runs.validation import validate_config

RATE = 0.5
READERS = ("fc7", "fc8")  # the layers whose inputs are dropout's outputs
TINY = dict(num_classes=10, input_size=64, width=0.125, conv_wgrad="xla", dropout_rate=RATE)


def _images_labels(batch=8):
    images = jax.random.normal(jax.random.key(1), (batch, 64, 64, 3))
    labels = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    return images, labels


def _paper_and_inverted_params():
    """Paper-form parameters, and the same with fc7's and fc8's kernels
    scaled by 1 - rate (halved): the inverted form's equivalent."""
    images, _ = _images_labels()
    params = network.AlexNet(**TINY).init(jax.random.key(0), images[:1], train=False)["params"]
    inverted = {
        name: {**layer, "kernel": layer["kernel"] * (1 - RATE)} if name in READERS else layer
        for name, layer in params.items()
    }
    return params, inverted


def _loss(params, model, images, labels, key):
    logits = model.apply({"params": params}, images, train=True, rngs={"dropout": key})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _dropout_outputs(model, params, images, key):
    """(logits, fc7's input, fc8's input) of a training forward pass, float64."""
    logits, captured = model.apply(
        {"params": params},
        images,
        train=True,
        rngs={"dropout": key},
        capture_intermediates=True,
        mutable=["intermediates"],
    )
    outputs = captured["intermediates"]
    return logits, *(np.asarray(outputs[name]["__call__"][0], np.float64) for name in ("Dropout_0", "Dropout_1"))


def test_the_default_is_the_papers():
    assert network.AlexNet().dropout_scaling == "test"


def test_train_form_is_flax_dropout_exactly_and_test_form_uses_its_mask():
    class Net(nn.Module):
        scaling: str | None  # None: flax's nn.Dropout

        @nn.compact
        def __call__(self, x, train):
            if self.scaling is None:
                return nn.Dropout(RATE, deterministic=not train)(x)
            return layers.Dropout(RATE, self.scaling)(x, train=train)

    x = jax.random.normal(jax.random.key(0), (16, 32))
    rngs = {"dropout": jax.random.key(5)}
    flax_out = Net(None).apply({}, x, True, rngs=rngs)
    np.testing.assert_array_equal(Net("train").apply({}, x, True, rngs=rngs), flax_out)
    paper_out = Net("test").apply({}, x, True, rngs=rngs)
    np.testing.assert_array_equal(paper_out, jnp.where(flax_out != 0, x, 0.0))  # kept units unscaled
    assert 0.3 < float(jnp.mean(paper_out == 0)) < 0.7
    np.testing.assert_array_equal(Net("train").apply({}, x, False), x)
    np.testing.assert_array_equal(Net("test").apply({}, x, False), x * (1 - RATE))


def test_same_evaluation_function_when_the_inverted_forms_fc7_fc8_are_halved():
    params, inverted = _paper_and_inverted_params()
    images, _ = _images_labels()
    paper_logits = network.AlexNet(**TINY).apply({"params": params}, images, train=False)
    inverted_model = network.AlexNet(**TINY, dropout_scaling="train")
    np.testing.assert_allclose(
        inverted_model.apply({"params": inverted}, images, train=False), paper_logits, rtol=1e-6, atol=1e-7
    )
    # The same weights are not the same function, nor is halving fc8 alone.
    assert not np.allclose(inverted_model.apply({"params": params}, images, train=False), paper_logits, rtol=1e-3)
    only_fc8 = {**params, "fc8": inverted["fc8"]}
    assert not np.allclose(inverted_model.apply({"params": only_fc8}, images, train=False), paper_logits, rtol=1e-3)


def test_with_the_same_masks_the_paper_form_gives_fc7_fc8_half_the_inverted_gradient():
    params, inverted = _paper_and_inverted_params()
    images, labels = _images_labels()
    key = jax.random.key(7)
    paper, inverted_model = network.AlexNet(**TINY), network.AlexNet(**TINY, dropout_scaling="train")
    paper_loss, paper_grads = jax.value_and_grad(_loss)(params, paper, images, labels, key)
    inverted_loss, inverted_grads = jax.value_and_grad(_loss)(inverted, inverted_model, images, labels, key)
    assert float(paper_loss) == pytest.approx(float(inverted_loss), rel=1e-6)  # same masks, same function

    # Independently: fc8's and fc7's kernel gradients from the dropout outputs
    # (fc7's and fc8's inputs) and the logits, by the chain rule.
    logits, fc7_in, fc8_in = _dropout_outputs(paper, params, images, key)
    # The same masks: the inverted form's dropout outputs are the paper's x2.
    np.testing.assert_array_equal(_dropout_outputs(inverted_model, inverted, images, key)[2], 2 * fc8_in)
    assert 0.3 < np.mean(fc8_in == 0) < 0.8  # dropped units (and ReLU zeros)
    probs = np.asarray(jax.nn.softmax(logits), np.float64)
    grad_logits = (probs - np.eye(10)[np.asarray(labels)]) / len(labels)  # mean cross-entropy
    grad_fc8 = fc8_in.T @ grad_logits
    # fc7's pre-activation gradient passes where fc8's input is non-zero: kept and ReLU > 0.
    grad_fc7_out = (grad_logits @ np.asarray(params["fc8"]["kernel"], np.float64).T) * (fc8_in != 0)
    grad_fc7 = fc7_in.T @ grad_fc7_out

    for name, expected in (("fc7", grad_fc7), ("fc8", grad_fc8)):
        paper_grad = np.asarray(paper_grads[name]["kernel"])
        np.testing.assert_allclose(paper_grad, expected, rtol=2e-4, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(np.asarray(inverted_grads[name]["kernel"]), 2 * expected, rtol=2e-4, atol=2e-7)
        # docs/paper.md: one SGD step of rate e on the inverted form, in the paper's
        # units (x2), is the paper form's step at rate 4e.
        e = 0.01
        np.testing.assert_allclose(
            2 * (inverted[name]["kernel"] - e * inverted_grads[name]["kernel"]),
            params[name]["kernel"] - 4 * e * paper_grads[name]["kernel"],
            rtol=1e-5,
            atol=1e-8,
        )
    # Every other gradient (the convolutions, fc6, all biases) is the same in both forms.
    for name in params:
        for leaf in params[name]:
            if name in READERS and leaf == "kernel":
                continue
            np.testing.assert_allclose(
                inverted_grads[name][leaf], paper_grads[name][leaf], rtol=1e-4, atol=1e-8, err_msg=f"{name}.{leaf}"
            )


@pytest.mark.parametrize("value", ["test", "train"])
def test_both_forms_validate(tiny_config, value):
    tiny_config.model.dropout_scaling = value
    validate_config(tiny_config)


@pytest.mark.parametrize("value", ["paper", "inverted", "", None])
def test_other_values_are_refused_naming_the_field(tiny_config, value):
    tiny_config.model.dropout_scaling = value
    with pytest.raises(ValueError, match=r"^config\.model\.dropout_scaling=.* must be one of \('test', 'train'\)$"):
        validate_config(tiny_config)
