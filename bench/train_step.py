"""Train-step throughput: this project's jitted step vs the PyTorch peer, and
the machine's matrix-multiply limit, in one run, on CPU or GPU.

    python -m bench.train_step                       # paper + digits, batch 128
    python -m bench.train_step --models paper --rounds 3 --steps 3
    python -m bench.train_step --micro_batch 0,16,32,64   # alexnet_jax's micro-batch sizes
    python -m bench.train_step --dtypes float32,bfloat16 --max_batch paper   # the GPU defaults

Each (contender, model, dtype, batch) runs in its own subprocess per round,
contenders alternating within a round, so machine noise hits both alike and
each one's peak memory is its own (max RSS of the process on CPU, the
device's peak bytes in use on GPU). Inputs are synthetic uint8 images of the
host-side size (256x256 for the paper model), already on the device: this
measures the step (augmentation on device included), not the input pipeline.
alexnet_jax runs once per `--micro_batch` value (`config.micro_batch_size`:
the same update computed in micro-batches; -1 = the default, chosen for the
machine; 0 = the whole batch at once).

On CPU a "before" row runs alexnet_jax with the defaults of the previous
table (BENCHMARKS.md): glibc's malloc as it comes (`ALEXNET_JAX_MALLOC=glibc`;
`--no-before` skips it), and a row runs the defaults with the opt-in
malloc settings (`ALEXNET_JAX_MALLOC=reuse`, alexnet_jax/host_malloc.py).
The jax worker restarts itself with huge pages where the defaults would
(alexnet_jax.platform.machine_settings, as `python -m alexnet_jax.main` does).
The default rows: `--micro_batch -1,32` on CPU. Before the rounds, each -1
row resolves its size as `python -m alexnet_jax.main` would: read from
alexnet_jax.train.micro_batch's record, or timed once and recorded.

PyTorch runs eager, and as a user tuning it for speed would run it
(`torch.compile` with inductor and channels_last memory; compile time is
reported and kept out of the step time); on CPU that one runs twice more,
with each of alexnet_jax's malloc settings: huge pages (glibc's tunable in
GLIBC_TUNABLES) and reuse (PyTorch's CPU tuning guide suggests a caching
allocator to the same end). Two ratio columns: against the faster of
eager and compiled PyTorch as a user runs them (issue 17's target), and
against the fastest PyTorch row, malloc settings included (on CPU).

The limit is the machine's best measured matrix rate: on CPU the best float32
n x n GEMM of jax (`jnp.dot`), numpy and torch in the same run, same size and
all cores; on GPU `jnp.dot`'s float32 and bfloat16 rates (bfloat16 is the
yardstick for both dtypes there). The CPU is named by model, core count and
the vector extensions that matter (AVX2, AVX-512, AMX), read from
/proc/cpuinfo: never compare tables of different CPUs. Where the CPU has AMX,
bfloat16 rows run too (for information: the paper trains in float32).
`--max_batch MODELS` also runs those models at the largest power-of-two
multiple of `--batch` that XLA's memory analysis of the compiled step fits in
the device's memory (two compilations, extrapolated linearly in the batch).

Needs requirements-bench.txt (torch) for the PyTorch rows; `--no-torch` runs
without it. On GPU the PyTorch peer gets cudnn.benchmark and TF32 matmuls
(XLA's default precision for float32 on GPU) and bfloat16 through autocast.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from alexnet_jax.platform import host_malloc, machine_settings
from alexnet_jax.platform.cpu_info import cpu_description, cpu_has_amx
from bench.step_workers import worker_fit, worker_gemm, worker_jax, worker_torch

# docs/paper.md: about 4.1 GFLOP per 224x224 image for a training step.
PAPER_GFLOP_PER_IMAGE = 4.1

# PyTorch as its user runs it, without alexnet_jax's malloc settings: the
# rows issue 17's ratio target is set against.
PYTORCH_AS_RUN = ("torch:eager", "torch:compiled")

# The environment of each CPU row's malloc settings (host_malloc.py):
# "reuse" is set by each worker's machine settings (alexnet_jax.platform.machine_settings); "before",
# the previous table's defaults, is glibc's malloc as it comes; "hugepages"
# gives PyTorch the tunable alexnet_jax's defaults restart with.
MALLOC_ENV = {
    "reuse": {host_malloc.VARIABLE: "reuse"},
    "before": {host_malloc.VARIABLE: "glibc"},
    "hugepages": {"GLIBC_TUNABLES": host_malloc.HUGE_PAGES},
}


def _run_worker(worker: str, args, env: dict | None = None, **fields) -> dict:
    """Runs one worker in a fresh process (`env` added to its environment);
    its result, or {"error": ...}."""
    command = [sys.executable, "-m", "bench.train_step", "--worker", worker]
    command += [f"--{k}={v}" for k, v in fields.items()]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        lines = result.stderr.strip().splitlines() or ["(no output)"]
        error = next((line for line in reversed(lines) if "Error" in line), lines[-1])
        return {"error": error[-200:], "stderr": result.stderr[-3000:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _label(contender: str, result: dict | None = None) -> str:
    if contender.startswith("torch"):
        if contender.endswith(":reuse"):
            return "PyTorch, torch.compile + channels_last, alexnet_jax's reuse malloc settings"
        if contender.endswith(":hugepages"):
            return "PyTorch, torch.compile + channels_last, glibc.malloc.hugetlb=1 (as alexnet_jax's defaults)"
        return "PyTorch, torch.compile + channels_last" if contender.endswith(":compiled") else "PyTorch (eager)"
    if contender.endswith(":before"):
        return "alexnet_jax, previous defaults: glibc's malloc as it comes (before)"
    if contender.endswith(":reuse"):
        return "alexnet_jax, defaults + ALEXNET_JAX_MALLOC=reuse"
    micro_batch = int(contender.split(":")[1])
    if micro_batch == -1:  # the default: say what it chose here
        chosen = (result or {}).get("micro_batch_size", 0)
        return "alexnet_jax, defaults" + (f" (micro-batches of {chosen})" if chosen else " (whole batch)")
    return "alexnet_jax" + (f", micro-batches of {micro_batch}" if micro_batch else ", whole batch")


def _resolve_defaults(args, contenders: list[str], settings: list[tuple[str, str, int]]) -> None:
    """Lets each default row (micro_batch_size=-1) time its micro-batch sizes
    now, where this machine has no measured choice yet
    (alexnet_jax.train.micro_batch), so no round's process does it before
    its timed steps."""
    for contender in (c for c in contenders if c.startswith("jax:-1")):
        env = MALLOC_ENV.get(contender.rpartition(":")[2], {})
        for model, dtype, batch in settings:
            fields = dict(models=model, batch=batch, dtype=dtype, warmup=0, steps=0, set=args.set, micro_batch="-1")
            result = _run_worker("jax", args, env, **fields)
            if "error" in result:
                raise RuntimeError(f"resolving micro_batch_size=-1 for {contender} failed:\n{result['stderr']}")
            chosen = result["micro_batch_size"] or "whole batch"
            print(f"{contender} {model} {dtype} batch {batch}: micro_batch_size=-1 is {chosen} here", flush=True)


def _measure(args, contenders: list[str], settings: list[tuple[str, str, int]]) -> tuple[dict, list[dict]]:
    """All rounds: every contender at every (model, dtype, batch); the matrix
    rate once per round."""
    runs = {(c, *s): [] for c in contenders for s in settings}
    gemm = []
    for round_index in range(args.rounds):
        for model, dtype, batch in settings:
            order = contenders if round_index % 2 == 0 else contenders[::-1]
            for contender in order:
                worker, _, variant = contender.partition(":")
                fields = dict(models=model, batch=batch, dtype=dtype, warmup=args.warmup, steps=args.steps)
                env = MALLOC_ENV.get(variant.rpartition(":")[2], {})
                if worker == "jax":
                    fields.update(set=args.set, micro_batch=variant.split(":")[0] or "0")
                else:
                    fields["compiled"] = variant.startswith("compiled")
                result = _run_worker(worker, args, env, **fields)
                if "error" in result:  # e.g. out of memory at the largest batch: a row says so
                    print(f"{contender} {model} {dtype} {batch}: {result['stderr']}", file=sys.stderr)
                else:  # progress, so a run cut short still shows what it measured
                    ms = 1000 * statistics.median(result["times"])
                    print(
                        f"round {round_index}: {contender} {model} {dtype} batch {batch}: {ms:.2f} ms/step", flush=True
                    )
                runs[contender, model, dtype, batch].append(result)
        gemm.append(_run_worker("gemm", args))
    return runs, gemm


def _print_table(args, contenders, settings, runs, gemm) -> None:
    platform, device = gemm[0]["platform"], gemm[0]["device"]
    on_gpu = platform == "gpu"
    limit_dtype = "bfloat16" if on_gpu else "float32"
    peaks = {d: max(max(g["gflops"][d].values()) for g in gemm) for d in gemm[0]["gflops"]}
    host = cpu_description() if platform == "cpu" else f"{device}; host {cpu_description()}"
    huge_pages = host_malloc.thp_policy(host_malloc.THP_ENABLED).strip() or "not in this kernel"
    print(f"\nmachine: {host}; transparent huge pages: {huge_pages}; load average {os.getloadavg()[0]:.2f}")
    n = gemm[0]["n"]
    for dtype, rate in peaks.items():
        per_library = ", ".join(
            f"{library} {max(g['gflops'][dtype][library] for g in gemm):.1f}" for library in gemm[0]["gflops"][dtype]
        )
        print(f"{dtype} GEMM {n}x{n}x{n}, best of {len(gemm)} runs: {rate:.1f} GFLOP/s ({per_library})")
    print(f"limit: the {limit_dtype} rate; {args.rounds} rounds x {args.steps} timed steps (+{args.warmup} warm-up)\n")
    memory = "peak device memory (MB)" if platform == "gpu" else "peak RSS (MB)"
    header = (
        f"| model | dtype | batch | contender | images/s | step median (ms) | step min-max (ms) | compile (s) "
        f"| {memory} | GFLOP/img | % of limit | ours/faster of eager, compiled PyTorch |"
    )
    if not on_gpu:
        header += " ours/fastest PyTorch row |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for model, dtype, batch in settings:
        ok = {c: [r for r in runs[c, model, dtype, batch] if "error" not in r] for c in contenders}
        jax_flop = statistics.mean(
            [r["xla_gflop_per_image"] for c in contenders if c.startswith("jax") for r in ok[c]] or [0.0]
        )
        flop = PAPER_GFLOP_PER_IMAGE if model == "paper" else jax_flop
        medians = {c: statistics.median(t for r in ok[c] for t in r["times"]) for c in contenders if ok[c]}
        torch_rows = [c for c in medians if c.startswith("torch")]
        as_run = min((medians[c] for c in torch_rows if c in PYTORCH_AS_RUN), default=None)
        fastest = min((medians[c] for c in torch_rows), default=None)
        for contender in contenders:
            if not ok[contender]:
                error = runs[contender, model, dtype, batch][0]["error"]
                empty = "|" * (header.count("|") - 5)  # the row's remaining cells, empty
                print(f"| {model} | {dtype} | {batch} | {_label(contender, {})} | failed: {error} {empty}")
                continue
            times = [1000 * t for r in ok[contender] for t in r["times"]]
            rate = batch / medians[contender]
            compile_s = ok[contender][0]["compile_s"]
            peak_mb = max(r["peak_mb"] for r in ok[contender])
            ours = not contender.startswith("torch")
            ratios = [as_run] + ([] if on_gpu else [fastest])
            ratio = " | ".join(f"{t / medians[contender]:.2f}" if ours and t is not None else "" for t in ratios)
            print(
                f"| {model} | {dtype} | {batch} | {_label(contender, ok[contender][0])} | {rate:.1f} "
                f"| {1000 * medians[contender]:.1f} | {min(times):.1f}-{max(times):.1f} "
                f"| {'-' if compile_s is None else f'{compile_s:.1f}'} | {peak_mb:.0f} "
                f"| {flop:.3f} | {100 * rate * flop / peaks[limit_dtype]:.1f} | {ratio} |"
            )
        if model == "paper":
            print(f"<!-- paper {dtype} batch {batch}: XLA counts {jax_flop:.3f} GFLOP/img; the table uses 4.1 -->")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="paper,digits")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtypes", help="model.dtype values (default: float32 on CPU, float32,bfloat16 on GPU)")
    parser.add_argument(
        "--max_batch",
        help="models also run at their largest batch, fitted, or given as model:batch (default: paper on GPU only)",
    )
    parser.add_argument("--warmup", type=int, help="untimed steps (default 1 on CPU, 5 on GPU)")
    parser.add_argument("--steps", type=int, help="timed steps per run (default 3 on CPU, 30 on GPU)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--micro_batch",
        help="alexnet_jax contenders: config.micro_batch_size values, comma-separated, -1 = the default "
        "(chosen for the machine), 0 = whole batch (default -1,0 on CPU, -1 on GPU)",
    )
    parser.add_argument("--set", default="", help='alexnet_jax config overrides, e.g. "model.use_lrn=False"')
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row (eager PyTorch only)")
    parser.add_argument(
        "--no-before",
        action="store_true",
        help="skip the CPU rows with the previous defaults and with the opt-in malloc settings",
    )
    parser.add_argument("--worker", choices=["jax", "torch", "fit", "gemm"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--compiled", default="False", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Each worker applies alexnet_jax's machine settings, the jax worker as alexnet_jax.main does (huge
    # pages where it would); this process runs no JAX, it only checks them before starting any worker.
    machine_settings.apply_machine_settings(huge_pages=args.worker == "jax", absl_app=False, runs_jax=bool(args.worker))
    if args.worker == "gemm":
        print(json.dumps(worker_gemm()))
        return
    if args.worker == "fit":
        print(json.dumps(worker_fit(args.models, args.batch, args.dtype)))
        return
    if args.worker:
        fields = (args.models, args.batch, args.dtype, args.warmup, args.steps)
        if args.worker == "jax":
            result = worker_jax(*fields, int(args.micro_batch), args.set)
        else:
            result = worker_torch(*fields, compiled=args.compiled == "True")
        print(json.dumps(result))
        return

    # Device work happens in subprocesses only: a parent holding the GPU
    # (XLA preallocates most of its memory) would starve the workers.
    probe = _run_worker("gemm", args)
    if "error" in probe:
        raise RuntimeError(f"matrix-rate worker failed:\n{probe['stderr']}")
    on_gpu = probe["platform"] == "gpu"
    args.warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 1)
    args.steps = args.steps if args.steps is not None else (30 if on_gpu else 3)
    dtypes = (args.dtypes or ("float32,bfloat16" if on_gpu or cpu_has_amx() else "float32")).split(",")
    micro = (args.micro_batch or ("-1" if on_gpu else "-1,32")).split(",")
    max_batch = args.max_batch if args.max_batch is not None else ("paper" if on_gpu else "")
    max_models = dict(entry.partition(":")[::2] for entry in max_batch.split(",") if entry)
    torch_contenders = ["torch:eager"] + ([] if args.no_compile else ["torch:compiled"])
    if not (on_gpu or args.no_compile):
        torch_contenders += ["torch:compiled:hugepages", "torch:compiled:reuse"]
    before = [] if on_gpu or args.no_before else ["jax:-1:reuse", "jax:-1:before"]
    contenders = [f"jax:{m}" for m in micro] + before + ([] if args.no_torch else torch_contenders)
    settings = []
    for model in args.models.split(","):
        for dtype in dtypes:
            settings.append((model, dtype, args.batch))
            if max_models.get(model):  # given as model:batch, e.g. to repeat a run without refitting
                settings.append((model, dtype, int(max_models[model])))
            elif model in max_models:
                fit = _run_worker("fit", args, models=model, batch=args.batch, dtype=dtype)
                if "error" in fit:
                    raise RuntimeError(f"fitting the {model} {dtype} batch failed:\n{fit['stderr']}")
                print(
                    f"{model} {dtype}: largest batch {fit['batch']} ({fit['per_image_mb']:.1f} MB/image, "
                    f"limit {fit['limit_gb']:.1f} GiB)",
                    flush=True,
                )
                settings.append((model, dtype, fit["batch"]))
    _resolve_defaults(args, contenders, settings)
    runs, gemm = _measure(args, contenders, settings)
    _print_table(args, contenders, settings, runs, [probe] + gemm)


if __name__ == "__main__":
    main()
