"""Forward+backward time of the layer variants behind the model's speed choices.

    python -m bench.layers            # batch 32, paper sizes

Prints one table, variants of a layer measured back to back in the same run:
  - LRN at conv1's output size: the textbook form left to autodiff with
    `pow(d, -0.75)` (exp/log) and with `rsqrt(d) * sqrt(rsqrt(d))`, and
    alexnet_jax.model.layers' (the rsqrt form with a hand-written backward pass);
  - conv1 (11x11/4, 3 -> 96 channels, the 2012 code's far-edge padding):
    the direct strided `lax.conv` vs `TowerConv(space_to_depth=True)` (a 3x3/1
    conv of 4x4-pixel blocks, 48 channels), gradient w.r.t. the parameters
    only, as for a first layer;
  - the towers: `TowerConv(impl="split")` vs `impl="grouped"`
    (`feature_group_count=2`), and split with the kernel gradient as one
    GEMM (`gemm_wgrad=True`), at conv2's size, gradients w.r.t. parameters
    and input;
  - max-pooling (3x3/2): `nn.max_pool` vs `pooling.max_pool_taps` (a
    scatter-free gradient, the default on CPU), at pool1's and pool2's (per
    tower) input size;
  - the whole paper model's gradient (direct conv1, XLA's kernel gradients,
    the default pooling) with and without LRN, with each tower
    implementation, with conv1 by space-to-depth, with the kernel gradients
    as GEMMs, and with max-pooling's gradient by XLA's select-and-scatter.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from alexnet_jax.model import layers, network, pooling
from alexnet_jax.platform import machine_settings
from bench.step_workers import best_ms


def _lrn_autodiff(x: jax.Array, inverse_power: Callable) -> jax.Array:
    """The textbook form, for comparison: a * (k + s * sum a^2) ** -beta."""
    squares = jnp.square(x).reshape(*x.shape[:-1], 2, x.shape[-1] // 2)
    sums = jax.lax.reduce_window(squares, 0.0, jax.lax.add, (1, 1, 1, 1, 5), (1,) * 5, ((0, 0),) * 4 + ((2, 2),))
    return x * inverse_power(2.0 + 2e-5 * sums.reshape(x.shape))


def _rsqrt_power(d: jax.Array) -> jax.Array:
    return jax.lax.rsqrt(d) * jnp.sqrt(jax.lax.rsqrt(d))


def _grad_of(fn: Callable) -> Callable:
    return jax.jit(jax.grad(lambda x: jnp.sum(fn(x) * x)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", help="compute dtype of the conv1 and whole-model rows")
    args = parser.parse_args()
    key = jax.random.key(0)
    rows = []

    conv1_out = jax.random.normal(key, (args.batch, 55, 55, 96)) * 30
    for variant, lrn in (
        ("pow(d, -0.75), autodiff", lambda x: _lrn_autodiff(x, lambda d: jnp.power(d, -0.75))),
        ("rsqrt, autodiff", lambda x: _lrn_autodiff(x, _rsqrt_power)),
        ("rsqrt, hand-written backward (used)", lambda x: layers.local_response_norm(x, towers=2)),
    ):
        rows.append(("LRN 55x55x96", variant, best_ms(_grad_of(lrn), conv1_out, repeats=args.repeats)))

    images = jax.random.normal(key, (args.batch, 224, 224, 3)) * 50
    for variant, s2d in (("direct (lax.conv)", False), ("space-to-depth", True)):
        conv = layers.TowerConv(
            features=96,
            kernel_size=(11, 11),
            strides=(4, 4),
            padding=((0, 3), (0, 3)),
            space_to_depth=s2d,
            dtype=jnp.dtype(args.dtype),
        )
        params = conv.init(key, images[:1])
        step = jax.jit(jax.grad(lambda p, x, conv=conv: jnp.sum(conv.apply(p, x) ** 2)))
        rows.append(("conv1 11x11/4, 3->96", variant, best_ms(step, params, images, repeats=args.repeats)))

    pool1_out = jax.random.normal(key, (args.batch, 27, 27, 96))
    for variant, impl, gemm_wgrad in (
        ("split", "split", False),
        ("grouped", "grouped", False),
        ("split, kernel gradient as GEMM", "split", True),
    ):
        conv = layers.TowerConv(features=256, kernel_size=(5, 5), towers=2, impl=impl, gemm_wgrad=gemm_wgrad)
        params = conv.init(key, pool1_out[:1])
        step = jax.jit(jax.grad(lambda p, x, conv=conv: jnp.sum(conv.apply(p, x) ** 2), argnums=(0, 1)))
        rows.append(("conv2 5x5, 2 towers", variant, best_ms(step, params, pool1_out, repeats=args.repeats)))

    # Max-pooling's forward+backward at pool1's and (per tower) pool2's input.
    for name, shape in (("pool1 3x3/2, 55x55x96", (55, 55, 96)), ("pool2 3x3/2, 27x27x128", (27, 27, 128))):
        activations = jax.nn.relu(jax.random.normal(key, (args.batch, *shape)))
        for variant, pool in (
            ("nn.max_pool", lambda x: nn.max_pool(x, (3, 3), strides=(2, 2))),
            ("max_pool_taps (default on CPU)", lambda x: pooling.max_pool_taps(x, 3, 2)),
        ):
            step = jax.jit(jax.grad(lambda x, pool=pool: jnp.sum(pool(x) ** 2)))
            rows.append((name, variant, best_ms(step, activations, repeats=args.repeats)))

    labels = jnp.zeros((args.batch,), jnp.int32)
    for label, fields in [
        ("paper (split)", {}),
        ("paper, no LRN", {"use_lrn": False}),
        ("paper, grouped", {"tower_impl": "grouped"}),
        ("paper, conv1 space-to-depth", {"conv1_impl": "space_to_depth"}),
        ("paper, kernel gradients as GEMMs", {"conv_wgrad": "gemm"}),
        ("paper, max-pooling by select-and-scatter", {"pool_impl": "xla"}),
    ]:
        model = network.AlexNet(**{"conv1_impl": "direct", "conv_wgrad": "xla", **fields}, dtype=args.dtype)
        params = model.init(key, images[:1], train=False)

        def loss(p, model=model):
            logits = model.apply(p, images, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        rows.append(("whole model", label, best_ms(jax.jit(jax.grad(loss)), params, repeats=args.repeats)))

    device = jax.devices()[0].device_kind
    print(f"\nforward+backward, batch {args.batch}, {args.dtype} conv1/whole model, best of {args.repeats}, {device}\n")
    print("| layer | variant | ms |\n|---|---|---|")
    for layer, variant, ms in rows:
        print(f"| {layer} | {variant} | {ms:.1f} |")


if __name__ == "__main__":
    machine_settings.apply_machine_settings(absl_app=False)  # before JAX starts, as alexnet_jax's entry points
    main()
