"""bench.train_step's table: each contender's step rate, time, memory and
share of the machine's matrix-multiply limit, and its ratio to PyTorch's
rows (the module docstring of bench.train_step says what each means)."""

from __future__ import annotations

import os
import statistics

from alexnet_jax.platform import host_malloc
from alexnet_jax.platform.cpu_info import cpu_description

# docs/paper.md: about 4.1 GFLOP per 224x224 image for a training step.
PAPER_GFLOP_PER_IMAGE = 4.1

# PyTorch as its user runs it, without alexnet_jax's malloc settings: the
# rows issue 17's ratio target is set against.
PYTORCH_AS_RUN = ("torch:eager", "torch:compiled")


def label(contender: str, result: dict | None = None) -> str:
    """The table's name of a contender ("jax:-1", "torch:compiled:reuse", ...)."""
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


def print_table(args, contenders: list[str], settings: list[tuple[str, str, int]], runs: dict, gemm: list) -> None:
    """The machine's line, the matrix rates and one table row per contender
    and (model, dtype, batch) of `runs` (bench.train_step's measurements)."""
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
                print(f"| {model} | {dtype} | {batch} | {label(contender, {})} | failed: {error} {empty}")
                continue
            times = [1000 * t for r in ok[contender] for t in r["times"]]
            rate = batch / medians[contender]
            compile_s = ok[contender][0]["compile_s"]
            peak_mb = max(r["peak_mb"] for r in ok[contender])
            ours = not contender.startswith("torch")
            ratios = [as_run] + ([] if on_gpu else [fastest])
            ratio = " | ".join(f"{t / medians[contender]:.2f}" if ours and t is not None else "" for t in ratios)
            print(
                f"| {model} | {dtype} | {batch} | {label(contender, ok[contender][0])} | {rate:.1f} "
                f"| {1000 * medians[contender]:.1f} | {min(times):.1f}-{max(times):.1f} "
                f"| {'-' if compile_s is None else f'{compile_s:.1f}'} | {peak_mb:.0f} "
                f"| {flop:.3f} | {100 * rate * flop / peaks[limit_dtype]:.1f} | {ratio} |"
            )
        if model == "paper":
            print(f"<!-- paper {dtype} batch {batch}: XLA counts {jax_flop:.3f} GFLOP/img; the table uses 4.1 -->")
