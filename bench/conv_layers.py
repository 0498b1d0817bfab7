"""The paper model's five convolutions one by one, at a train step's batch:
forward alone and forward + backward, their matrix rates, and the machine's
best GEMM and the whole train step in the same run.

    python -m bench.conv_layers                       # batch 128, float32
    python -m bench.conv_layers --batch 32 --dtype bfloat16 --no-step

On CPU XLA's own convolution kernels do not appear among the operations of a
profiler trace (bench.profile_step), so this is where a step's convolution
time is measured. Each layer is `layers.TowerConv` as the model builds it
with its defaults (towers split, XLA's kernel gradients, conv1 direct), on
random inputs of the layer's input shape. Forward + backward is the gradient
of 0.5 * sum(y^2) (so the forward pass is needed) with respect to the
parameters and, from conv2 on, the input: the passes a train step computes.
GFLOP count the convolutions' multiply-adds only (2 per multiply-add; the
bias, the squares and the bias gradients are in the time, not the count).
The step row is bench.train_step's jax worker: the same model's whole train
step (whole batch, synthetic inputs), best of its timed steps.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from alexnet_jax.model import layer_table, layers
from alexnet_jax.platform import machine_settings
from alexnet_jax.platform.cpu_info import cpu_description
from bench.step_workers import best_ms, worker_gemm, worker_jax

PAPER_INPUT = 224
POOL_WINDOW, POOL_STRIDE = 3, 2


def conv_shapes(batch: int) -> list[tuple[layer_table.ConvLayer, tuple[int, ...], int, object]]:
    """(layer, input shape, output side, padding) of each paper convolution."""
    side, channels, shapes = PAPER_INPUT, 3, []
    for layer in layer_table.conv_stack():
        padding, out = layer_table.conv_padding(side, layer.kernel, layer.stride)
        shapes.append((layer, (batch, side, side, channels), out, padding))
        side, channels = out, layer.filters
        if layer.pool:
            side = (side - POOL_WINDOW) // POOL_STRIDE + 1
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row (best taken)")
    parser.add_argument("--no-step", action="store_true", help="skip the whole train step's row")
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    key = jax.random.key(0)
    rows = []
    for layer, shape, out, padding in conv_shapes(args.batch):
        towers = 2 if layer.grouped else 1
        conv = layers.TowerConv(
            features=layer.filters,
            kernel_size=(layer.kernel, layer.kernel),
            strides=(layer.stride, layer.stride),
            padding=padding,
            towers=towers,
            dtype=dtype,
        )
        x = jax.random.normal(key, shape)
        params = conv.init(key, x[:1])
        forward = jax.jit(conv.apply)
        with_input = layer.name != "conv1"  # a first layer needs no input gradient
        grad = jax.jit(
            jax.grad(
                lambda p, x, conv=conv: 0.5 * jnp.sum(jnp.square(conv.apply(p, x).astype(jnp.float32))),
                argnums=(0, 1) if with_input else 0,
            )
        )
        forward_ms = best_ms(forward, params, x, repeats=args.repeats)
        both_ms = best_ms(grad, params, x, repeats=args.repeats)
        macs = args.batch * out * out * layer.filters * layer.kernel**2 * shape[-1] // towers
        gflop = 2 * macs * (3 if with_input else 2) / 1e9
        describe = f"{shape[1]}x{shape[2]}x{shape[3]} -> {layer.filters}, {layer.kernel}x{layer.kernel}/{layer.stride}"
        rows.append((f"{layer.name} ({describe}, {towers} tower{'s' * (towers > 1)})", forward_ms, both_ms, gflop))

    gemm = worker_gemm()
    step = None if args.no_step else worker_jax("paper", args.batch, args.dtype, warmup=1, repeats=3, micro_batch=0)
    limit_dtype = "bfloat16" if gemm["platform"] == "gpu" else "float32"
    rates = gemm["gflops"][limit_dtype]
    limit = max(rates.values())
    print(f"\nmachine: {cpu_description()}; device: {jax.devices()[0].device_kind}")
    print(
        f"{limit_dtype} GEMM {gemm['n']}^3: {limit:.1f} GFLOP/s ("
        + ", ".join(f"{name} {rate:.1f}" for name, rate in rates.items())
        + f"); batch {args.batch}, {args.dtype}, best of {args.repeats}\n"
    )
    print("| convolution | forward (ms) | forward + backward (ms) | GFLOP | GFLOP/s | % of GEMM |")
    print("|---|---|---|---|---|---|")
    for name, forward_ms, both_ms, gflop in rows:
        rate = gflop / both_ms * 1000
        print(f"| {name} | {forward_ms:.1f} | {both_ms:.1f} | {gflop:.1f} | {rate:.1f} | {100 * rate / limit:.1f} |")
    total_ms, total_gflop = sum(r[2] for r in rows), sum(r[3] for r in rows)
    total_rate = total_gflop / total_ms * 1000
    print(
        f"| all five | {sum(r[1] for r in rows):.1f} | {total_ms:.1f} | {total_gflop:.1f} | {total_rate:.1f} "
        f"| {100 * total_rate / limit:.1f} |"
    )
    if step is not None:
        step_ms = 1000 * min(step["times"])
        print(
            f"\nwhole train step (bench.train_step's jax worker, whole batch): {step_ms:.1f} ms; "
            f"the five convolutions' forward + backward are {100 * total_ms / step_ms:.0f}% of it"
        )


if __name__ == "__main__":
    machine_settings.apply_machine_settings(huge_pages=True, absl_app=False)  # measure as alexnet_jax.main runs
    main()
