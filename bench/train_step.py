"""Train-step throughput: this project's jitted step vs the PyTorch peer, and
the machine's matrix-multiply limit, in one run.

    python -m bench.train_step                       # paper + digits, batch 128
    python -m bench.train_step --models paper --rounds 3 --steps 3
    python -m bench.train_step --micro_batch 0,16,32,64   # alexnet_jax's micro-batch sizes

Each (contender, model) runs in its own subprocess per round, contenders
alternating within a round, so machine noise hits both alike and each one's
peak memory (max RSS of its process) is its own. Inputs are synthetic uint8
images of the host-side size (256x256 for the paper model): this measures
the step (augmentation on device included), not the input pipeline.
alexnet_jax runs once per `--micro_batch` value (`config.micro_batch_size`:
the same update computed in micro-batches; 0 = the whole batch at once).

Needs requirements-bench.txt (torch, CPU build) for the PyTorch rows;
`--no-torch` runs without it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# PAPER.md: about 4.1 GFLOP per 224x224 image for a training step.
PAPER_GFLOP_PER_IMAGE = 4.1
COMPARABLE = {"model.within_channel_norm": False, "pca_noise_std": 0.0}  # the PyTorch peer has neither


def _config(name: str, batch: int, micro_batch: int = 0):
    from configs import digits, paper

    config = (paper if name == "paper" else digits).get_config()
    config.batch_size = batch
    config.micro_batch_size = micro_batch
    config.mesh = (1, 1)
    for field, value in COMPARABLE.items():
        parent, _, leaf = field.rpartition(".")
        (config[parent] if parent else config)[leaf] = value
    return config


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_calls(fn, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def worker_jax(model_name: str, batch: int, warmup: int, steps: int, micro_batch: int) -> dict:
    import functools

    import jax
    import numpy as np

    from alexnet_jax import data_stats, sharding, train

    config = _config(model_name, batch, micro_batch)
    mesh = sharding.make_mesh(config.mesh)
    state = train.create_train_state(config, train.create_model(config), 10_000, mesh)
    rng = np.random.default_rng(0)
    size = config.resize_size
    batch_np = {
        "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, config.model.num_classes, (batch,)),
    }
    data = sharding.global_batch(batch_np, mesh)
    key = jax.random.key(0)
    stats = data_stats.published(config.mean_rgb)  # synthetic data: any fixed statistics
    step_fn = jax.jit(functools.partial(train.train_step, config=config, stats=stats), donate_argnums=0)
    start = time.perf_counter()
    compiled = step_fn.lower(state, data, key).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    holder = {"state": state}

    def run_step():
        holder["state"], metrics = compiled(holder["state"], data, key)
        jax.block_until_ready(metrics)

    times = time_calls(run_step, warmup, steps)
    return {
        "times": times,
        "compile_s": compile_s,
        "peak_rss_mb": _peak_rss_mb(),
        "xla_gflop_per_image": cost.get("flops", 0.0) / batch / 1e9,
    }


def worker_torch(model_name: str, batch: int, warmup: int, steps: int, micro_batch: int = 0) -> dict:
    import torch

    from bench.torch_alexnet import AlexNetTorch, make_step

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    config = _config(model_name, batch)
    m = config.model
    model = AlexNetTorch(m.num_classes, m.input_size, m.width, m.towers).train()
    step = make_step(model, m.input_size, tuple(config.mean_rgb))
    size = config.resize_size
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    labels = torch.randint(0, m.num_classes, (batch,))
    times = time_calls(lambda: step(images, labels), warmup, steps)
    return {"times": times, "compile_s": None, "peak_rss_mb": _peak_rss_mb()}


def gemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 GEMM rate of this machine through XLA (jnp.dot, n x n)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _run_worker(contender: str, model: str, args) -> dict:
    worker, _, micro_batch = contender.partition(":")
    command = [
        sys.executable,
        "-m",
        "bench.train_step",
        "--worker",
        worker,
        "--micro_batch",
        micro_batch or "0",
        "--models",
        model,
        "--batch",
        str(args.batch),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        raise RuntimeError(f"{contender}/{model} worker failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="paper,digits")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--micro_batch",
        default="0,32",
        help="alexnet_jax contenders: config.micro_batch_size values, comma-separated (0 = whole batch)",
    )
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker = worker_jax if args.worker == "jax" else worker_torch
        print(json.dumps(worker(args.models, args.batch, args.warmup, args.steps, int(args.micro_batch))))
        return

    contenders = [f"jax:{m}" for m in args.micro_batch.split(",")] + ([] if args.no_torch else ["torch"])
    models = args.models.split(",")
    runs = {(c, m): [] for c in contenders for m in models}
    gemm = []
    for round_index in range(args.rounds):
        for model in models:
            order = contenders if round_index % 2 == 0 else contenders[::-1]
            for contender in order:
                runs[contender, model].append(_run_worker(contender, model, args))
        gemm.append(gemm_peak_gflops())
    peak = max(gemm)

    print(
        f"\nmachine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; float32 GEMM peak "
        f"(jnp.dot 2048^2, best of {5 * args.rounds}): {peak:.1f} GFLOP/s"
    )
    print(
        f"batch {args.batch}, {args.rounds} rounds x {args.steps} timed steps (+{args.warmup} warm-up) per contender\n"
    )
    header = (
        "| model | contender | images/s | step median (s) | step min-max (s) | compile (s) | peak RSS (MB) "
        "| GFLOP/img | % of GEMM peak | ours/PyTorch |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for model in models:
        jax_flop = statistics.mean(r["xla_gflop_per_image"] for r in runs[contenders[0], model])
        flop = PAPER_GFLOP_PER_IMAGE if model == "paper" else jax_flop
        medians = {c: statistics.median(t for r in runs[c, model] for t in r["times"]) for c in contenders}
        for contender in contenders:
            times = [t for r in runs[contender, model] for t in r["times"]]
            rate = args.batch / medians[contender]
            compile_s = runs[contender, model][0]["compile_s"]
            rss = max(r["peak_rss_mb"] for r in runs[contender, model])
            is_torch = contender == "torch"
            ratio = "" if is_torch or "torch" not in medians else f"{medians['torch'] / medians[contender]:.2f}"
            print(
                f"| {model} | {_label(contender)} | {rate:.1f} "
                f"| {medians[contender]:.3f} | {min(times):.3f}-{max(times):.3f} "
                f"| {'-' if compile_s is None else f'{compile_s:.1f}'} | {rss:.0f} | {flop:.3f} "
                f"| {100 * rate * flop / peak:.1f} | {ratio} |"
            )
        print(
            f"\n{model}: XLA counts {jax_flop:.3f} GFLOP per image per train step"
            + (f" (PAPER.md: about {PAPER_GFLOP_PER_IMAGE}; the table uses PAPER.md's)" if model == "paper" else "")
        )


def _label(contender: str) -> str:
    if contender == "torch":
        return "PyTorch"
    micro_batch = int(contender.partition(":")[2])
    return "alexnet_jax" + (f", micro-batches of {micro_batch}" if micro_batch else "")


if __name__ == "__main__":
    main()
