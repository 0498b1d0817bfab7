"""A GPU node's check in one table: the paper step, the raw reader on the
host's cores, and the step fed by that reader, within 8 minutes.

    bench/device_check.sh              # full sizes: one H100/H200 node
    bench/device_check.sh --small      # tiny sizes: end to end on a CPU (about 40 s on the 2-core VM)

Rows (docs/gpu.md says how to read them):
- the paper step (configs/paper.py as trained) in float32 and bfloat16 at
  batch 128, on one synthetic batch already on the device: the step alone;
- the raw reader (`cache_format="raw"`, alexnet_jax/data/raw_records.py)
  with 1, 2, 4, 8 and 16 threads, from a raw cache of random images it
  writes into a temporary folder (`--cache_dir`, default $TMPDIR) and reads
  once first, so the rows read from the page cache, not the disk;
- the faster step fed by that reader with its best thread count, through
  the training loop's host-to-device prefetch, against the synthetic row.

Every row is bounded by counts and a time budget (FULL, SMALL): two
compilations (14.6-15.8 s each on the H100, BENCHMARKS.md), at most 10 s of
steps per step row and 3 s per reader row; the 1.5 GiB cache took 2.3 s to
write and read on the 2-core VM. Not yet run on a GPU. It
imports no TensorFlow, tensorflow_datasets or clu (bench/device_rows.py):
a node with jax and its CUDA plugin, flax, optax, numpy and ml_collections runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import platform
import sys
import tempfile
import time

from alexnet_jax.platform import cpu_info
from bench import device_rows
from bench.device_rows import Sizes

# The cache: 8192 paper-sized images, 1.5 GiB (beyond any CPU cache; a reader row reads it over and over).
FULL = Sizes(
    batch=128,
    warmup=5,
    max_steps=2000,
    step_seconds=10.0,
    read_seconds=3.0,
    cache_images=8192,
    workers=(1, 2, 4, 8, 16),
)
SMALL = Sizes(batch=4, warmup=1, max_steps=2, step_seconds=2.0, read_seconds=0.5, cache_images=64, workers=FULL.workers)
DTYPES = ("float32", "bfloat16")
KEEPS_UP = 0.95  # fed / synthetic at or above this: the reader keeps the step fed


@dataclasses.dataclass
class Row:
    name: str
    images_per_s: float
    ms_per_step: float | None = None
    ratio: float | None = None  # fed / synthetic
    notes: str = ""


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_lines() -> list[str]:
    """The accelerator (jax.devices()), the CPU and the versions that matter."""
    import jax

    devices = jax.devices()
    kinds = sorted({f"{d.platform}: {d.device_kind}" for d in devices})
    packages = ["jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "numpy"]
    versions = ", ".join(f"{p} {v}" for p in packages if (v := _version(p)))
    model = cpu_info.cpu_model_and_flags()[0]
    return [
        f"Devices: {len(devices)} x {', '.join(kinds)} (jax backend {jax.default_backend()}; the rows use the first)",
        f"CPU: {model}, {os.cpu_count()} logical CPUs, {cpu_info.usable_cpus()} usable by this process",
        f"Python {platform.python_version()}; {versions}",
    ]


def worker_counts(sizes: Sizes, small: bool, given: str | None) -> tuple[int, ...]:
    """`--workers`, else the sizes' list; at small sizes only counts up to the
    host's cores (at least 2), since more threads than cores measure nothing."""
    if given:
        return tuple(int(w) for w in given.split(","))
    if small:
        return tuple(w for w in sizes.workers if w <= max(2, cpu_info.usable_cpus()))
    return sizes.workers


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def format_table(rows: list[Row]) -> list[str]:
    lines = ["| row | images/s | ms/step | fed / synthetic | notes |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.name} | {_fmt(r.images_per_s)} | {_fmt(r.ms_per_step, 2)} | {_fmt(r.ratio, 2)} | {r.notes} |"
        )
    return lines


def _workers(count: int) -> str:
    return f"{count} worker{'s' if count > 1 else ''}"


def _progress(row: Row) -> None:
    # Each row as it completes: a run cut short still shows what it measured.
    print(f"  {row.name}: {row.images_per_s:,.0f} images/s {row.notes}", flush=True)


def measure(sizes: Sizes, workers: tuple[int, ...], cache_dir: str | None) -> tuple[list[Row], list[str]]:
    """The table's rows, and the lines under it (the cache, the verdict)."""
    rows, step_fns, synthetic = [], {}, {}
    for dtype in DTYPES:
        step_fns[dtype] = step = device_rows.PaperStep(sizes.batch, dtype)
        result = step.run_synthetic(sizes)
        synthetic[dtype] = result["images_per_s"]
        memory = "" if step.step_gib is None else f", XLA step memory {step.step_gib:.2f} GiB"
        rows.append(
            Row(
                f"paper step, {dtype}, batch {sizes.batch}, synthetic input on the device",
                result["images_per_s"],
                result["ms_per_step"],
                notes=f"compile {step.compile_s:.1f} s{memory}",
            )
        )
        _progress(rows[-1])
    config = step_fns[DTYPES[0]].config
    with tempfile.TemporaryDirectory(prefix="device_check-", dir=cache_dir) as directory:
        start = time.perf_counter()
        records = device_rows.write_cache(directory, sizes.cache_images, config.resize_size, config.model.num_classes)
        written = (
            f"Raw cache: {records.num_examples} images of {config.resize_size}x{config.resize_size}, "
            f"{device_rows.cache_gib(records):.2f} GiB, written and read once in {time.perf_counter() - start:.1f} s."
        )
        print(f"  {written}", flush=True)
        reads = {}
        for count in workers:
            reads[count] = device_rows.read_rate(records, sizes.batch, count, sizes)
            rows.append(
                Row(
                    f"raw reader, {_workers(count)}, batch {sizes.batch}, page cache",
                    reads[count]["images_per_s"],
                    notes=f"{reads[count]['gb_per_s']:.2f} GB/s",
                )
            )
            _progress(rows[-1])
        best = max(reads, key=lambda c: reads[c]["images_per_s"])
        fed_dtype = max(synthetic, key=synthetic.get)
        fed = step_fns[fed_dtype].run_fed(records, best, sizes)
        records.close()
    ratio = fed["images_per_s"] / synthetic[fed_dtype]
    rows.append(
        Row(
            f"paper step, {fed_dtype}, batch {sizes.batch}, fed by the raw reader ({_workers(best)}, host to device)",
            fed["images_per_s"],
            fed["ms_per_step"],
            ratio,
            f"synthetic input: {synthetic[fed_dtype]:,.0f} images/s",
        )
    )
    _progress(rows[-1])
    verdict = f"Fed / synthetic {ratio:.2f}: "
    if ratio >= KEEPS_UP:
        verdict += f"the raw reader keeps the {fed_dtype} step fed (>= {KEEPS_UP})."
    elif reads[best]["images_per_s"] < synthetic[fed_dtype]:
        verdict += (
            f"input-bound: the reader alone gives {reads[best]['images_per_s']:,.0f} images/s "
            f"({_workers(best)}), the step takes {synthetic[fed_dtype]:,.0f}."
        )
    else:  # the reader alone is fast enough: what is lost is in feeding, not reading
        verdict += (
            f"below {KEEPS_UP} although the reader alone gives {reads[best]['images_per_s']:,.0f} images/s: "
            "the host-to-device copies, or the reader's threads taking cores from the step (on a CPU they share them)."
        )
    return rows, [written, verdict]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (batch 4, 64 cached images): a CPU check")
    parser.add_argument("--workers", help="reader thread counts, comma-separated (default 1,2,4,8,16)")
    parser.add_argument("--cache_dir", help="where the temporary raw cache goes (default: $TMPDIR or /tmp)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    sizes = SMALL if args.small else FULL
    workers = worker_counts(sizes, args.small, args.workers)
    print(f"device check ({'small' if args.small else 'full'} sizes)", flush=True)
    for line in machine_lines():
        print(line, flush=True)
    rows, notes = measure(sizes, workers, args.cache_dir)
    print()
    print("\n".join(format_table(rows)))
    print()
    print("\n".join(notes))
    print(f"device check finished in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
