"""Bytes communicated per training step by each parallelism scheme, read
from the compiled program (no hand count, nothing run).

    python -m bench.communication                      # the paper's model, batch 128
    python -m bench.communication --config configs/digits.py

For each scheme and mesh, the train step is lowered and compiled for forced
CPU devices from abstract inputs, and the operand sizes of its collectives
(alexnet_jax.parallel.collectives) are summed: bytes each device sends into
collectives per step. Forced CPU devices share this machine's cores, so no
timing is reported; the bytes are the same on any backend for the same
program, up to the backend's choice of collective algorithm.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # run as a script (importing it changes nothing): 8 forced CPU devices, quiet TensorFlow
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import importlib.util  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from alexnet_jax.data import augment  # noqa: E402
from alexnet_jax.parallel import collectives, sharding
from alexnet_jax.platform import machine_settings
from alexnet_jax.train import steps

# (label, mesh, model_parallel)
SCHEMES = (
    ("pure data parallel", (8, 1), "towers"),
    ("towers + data parallel", (4, 2), "towers"),
    ("towers only (the paper's 2 GPUs)", (1, 2), "towers"),
    ("data-parallel convs, model-parallel dense", (4, 2), "dense"),
)


def _load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def compiled_collectives(config, mesh_spec, model_parallel) -> list[collectives.Collective]:
    """The collectives of one compiled train step (abstract inputs only)."""
    config = config.copy_and_resolve_references()
    config.mesh, config.model_parallel = mesh_spec, model_parallel
    mesh = sharding.make_mesh(mesh_spec)
    model = steps.create_model(config)
    # 10_000 steps per epoch: only shapes the schedule, not the program's collectives.
    state = steps.abstract_train_state(config, model, 10_000, mesh)
    train_fn, _ = steps.make_step_fns(config, model, mesh, state, augment.published_stats(config.mean_rgb))
    batch_sharding = sharding.batch_sharding(mesh)
    side = config.resize_size
    batch = {
        "image": jax.ShapeDtypeStruct((config.batch_size, side, side, 3), jnp.uint8, sharding=batch_sharding),
        "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=batch_sharding),
    }
    hlo = train_fn.lower(state, batch, jax.random.key(1)).compile().as_text()
    return collectives.collectives(hlo)


def _mb(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/paper.py")
    parser.add_argument("--batch_size", type=int, default=None, help="global batch (default: the config's)")
    args = parser.parse_args()
    config = _load_config(args.config)
    if args.batch_size:
        config.batch_size = args.batch_size

    print(f"{args.config}, global batch {config.batch_size}, float32; MB = 1e6 bytes sent into collectives")
    print("per device per training step, from the compiled HLO (forced CPU devices).\n")
    print("| scheme | mesh (data, model) | total MB | forward MB | backward MB | by collective (MB) |")
    print("|---|---|---|---|---|---|")
    by_scheme = {}
    for label, mesh_spec, model_parallel in SCHEMES:
        found = by_scheme[label] = compiled_collectives(config, mesh_spec, model_parallel)
        total = sum(c.operand_bytes for c in found)
        backward = sum(c.operand_bytes for c in found if c.backward)
        kinds = ", ".join(f"{k} {_mb(v)}" for k, v in sorted(collectives.bytes_by(found, "kind").items()))
        print(f"| {label} | {mesh_spec} | {_mb(total)} | {_mb(total - backward)} | {_mb(backward)} | {kinds} |")

    # Where each scheme communicates: per layer ("outside" = the loss, metrics
    # and optimiser, e.g. the data-parallel gradient sums of biases).
    print("\n| scheme | layer | forward MB | backward MB |")
    print("|---|---|---|---|")
    for label, found in by_scheme.items():
        for layer in sorted({c.layer or "outside" for c in found}):
            mine = [c for c in found if (c.layer or "outside") == layer]
            backward = sum(c.operand_bytes for c in mine if c.backward)
            print(f"| {label} | {layer} | {_mb(sum(c.operand_bytes for c in mine) - backward)} | {_mb(backward)} |")


if __name__ == "__main__":
    machine_settings.apply_machine_settings(absl_app=False)  # the programs alexnet_jax's entry points compile
    main()
