"""Where a train step's time goes: a jax.profiler trace of a few steps, and
the device's operations ranked by their total time.

    python -m bench.profile_step --models paper --dtype bfloat16 --batch 128
    tensorboard --logdir /tmp/alexnet_profile       # the same trace, Profile tab

The trace is written with jax.profiler (TensorBoard's profile plugin reads
it) and also as a Perfetto/Chrome JSON trace, which this script reads: on a
GPU the kernels of the device's streams, on CPU the XLA operations of the
host threads. Same step and synthetic inputs as bench/train_step.py.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import time

import jax
import numpy as np

from alexnet_jax import sharding
from bench.train_step import _jax_step


def _device_events(trace: dict) -> list[dict]:
    """Complete events of the GPU streams, or on CPU those of XLA's
    operations (events that carry an `hlo_op` argument)."""
    names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "process_name"}
    complete = [e for e in trace["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    gpu = [e for e in complete if "/device:GPU" in names.get(e["pid"], "")]
    return gpu or [e for e in complete if "hlo_op" in e.get("args", {})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="paper")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--micro_batch", type=int, default=0)
    parser.add_argument("--steps", type=int, default=5, help="traced steps (after 3 untraced)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--logdir", default="/tmp/alexnet_profile")
    args = parser.parse_args()

    step_fn, state, key, config = _jax_step(args.models, args.batch, args.dtype, args.micro_batch)
    rng = np.random.default_rng(0)
    size = config.resize_size
    batch = {
        "image": rng.integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, config.model.num_classes, (args.batch,)),
    }
    data = sharding.global_batch(batch, sharding.make_mesh(config.mesh))
    for _ in range(3):
        state, metrics = step_fn(state, data, key)
    jax.block_until_ready(metrics)
    with jax.profiler.trace(args.logdir, create_perfetto_trace=True):
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step_fn(state, data, key)
        jax.block_until_ready(metrics)
        wall = (time.perf_counter() - start) / args.steps
    path = max(glob.glob(os.path.join(args.logdir, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime)
    with gzip.open(path) as f:
        events = _device_events(json.load(f))
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for event in events:
        by_name[event["name"]][0] += event["dur"] / 1000 / args.steps  # ms per step
        by_name[event["name"]][1] += 1
    busy = sum(ms for ms, _ in by_name.values())
    print(
        f"\n{args.models} {args.dtype} batch {args.batch}, {jax.devices()[0].device_kind}: {1000 * wall:.2f} ms/step "
        f"(wall, {args.steps} traced steps); operations sum to {busy:.2f} ms/step. Trace: {path}\n"
    )
    print("| operation | ms/step | % of op time | calls/step |\n|---|---|---|---|")
    for name, (ms, calls) in sorted(by_name.items(), key=lambda item: -item[1][0])[: args.top]:
        print(f"| {name[:90]} | {ms:.3f} | {100 * ms / busy:.1f} | {calls / args.steps:.0f} |")


if __name__ == "__main__":
    main()
