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
import re
import time

import jax

from alexnet_jax.platform import machine_settings
from bench.step_workers import jax_step, synthetic_batch


def _device_events(trace: dict) -> list[dict]:
    """Complete events of the GPU streams, or on CPU those of XLA's
    operations (events that carry an `hlo_op` argument)."""
    names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "process_name"}
    complete = [e for e in trace["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    gpu = [e for e in complete if "/device:GPU" in names.get(e["pid"], "")]
    return gpu or [e for e in complete if "hlo_op" in e.get("args", {})]


# The opcodes that say what a fused computation does, most telling first.
_KINDS = ("convolution", "dot", "custom-call", "scatter", "select-and-scatter", "reduce-window", "gather", "reduce")


def hlo_kinds(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (kind, layer) from a compiled module's HLO text:
    the kind is the most telling opcode of the instruction or of the
    computation a fusion calls (else "elementwise"), the layer the model's
    named scope in its metadata (conv1..fc8, else "-")."""
    bodies, current = {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.-]+) ", line)
        if header:
            current = bodies.setdefault(header.group(1), [])
        elif current is not None:
            current.append(line)
    index = {}
    for lines in bodies.values():
        for line in lines:
            match = re.match(r"\s*(?:ROOT )?%([\w.-]+) = \S+ ([a-z][\w-]*)\(", line)
            if not match:
                continue
            name, opcode = match.groups()
            called = re.search(r"calls=%([\w.-]+)", line)
            text = "\n".join([line, *bodies.get(called.group(1), [])]) if called else line
            opcodes = set(re.findall(r"= \S+ ([a-z][\w-]*)\(", text))
            kind = next((k for k in _KINDS if k in opcodes), "elementwise" if opcode == "fusion" else opcode)
            layer = re.search(r"/(conv\d|fc\d)/", text)
            index[name] = (kind, layer.group(1) if layer else "-")
    return index


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

    step_fn, state, key, config = jax_step(args.models, args.batch, args.dtype, args.micro_batch)
    data = synthetic_batch(config, args.batch)
    compiled = step_fn.lower(state, data, key).compile()  # run, and read for the operations' kinds
    for _ in range(3):
        state, metrics = compiled(state, data, key)
    jax.block_until_ready(metrics)
    with jax.profiler.trace(args.logdir, create_perfetto_trace=True):
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = compiled(state, data, key)
        jax.block_until_ready(metrics)
        wall = (time.perf_counter() - start) / args.steps
    path = max(glob.glob(os.path.join(args.logdir, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime)
    with gzip.open(path) as f:
        events = _device_events(json.load(f))
    kinds = hlo_kinds(compiled.as_text())
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for event in events:
        by_name[event["name"]][0] += event["dur"] / 1000 / args.steps  # ms per step
        by_name[event["name"]][1] += 1
    busy = sum(ms for ms, _ in by_name.values())
    by_kind = collections.defaultdict(float)
    for name, (ms, _) in by_name.items():
        by_kind[kinds.get(name, ("(not in HLO)", "-"))] += ms
    device = jax.devices()[0].device_kind
    print(
        f"\n{args.models} {args.dtype} batch {args.batch}, micro-batch {args.micro_batch or '-'}, {device}: "
        f"{1000 * wall:.2f} ms/step (wall, {args.steps} traced steps); operations sum to {busy:.2f} ms/step "
        f"(more than the wall time where threads overlap). Trace: {path}\n"
    )
    print("| kind | layer | ms/step | % of op time |\n|---|---|---|---|")
    for (kind, layer), ms in sorted(by_kind.items(), key=lambda item: -item[1])[: args.top]:
        print(f"| {kind} | {layer} | {ms:.3f} | {100 * ms / busy:.1f} |")
    print("\n| operation | kind | layer | ms/step | % of op time | calls/step |\n|---|---|---|---|---|---|")
    for name, (ms, calls) in sorted(by_name.items(), key=lambda item: -item[1][0])[: args.top]:
        kind, layer = kinds.get(name, ("(not in HLO)", "-"))
        print(f"| {name[:90]} | {kind} | {layer} | {ms:.3f} | {100 * ms / busy:.1f} | {calls / args.steps:.0f} |")


if __name__ == "__main__":
    machine_settings.apply_machine_settings(huge_pages=True, absl_app=False)  # profile as alexnet_jax.main runs
    main()
