"""Collects a sweep's results into tables and a plot of the learning curves.

    python -m launch.report --workdir runs/ablations [--out DIR] [--target_error 0.25]

Reads `<workdir>/sweep.json` (written by launch.sweep) and each variant's
TensorBoard event files, the same ones TensorBoard shows. Writes to `--out`
(default: the workdir):
  - report.md: one row per variant (seeds pooled): final and best validation
    top-1/top-5 error, steps to the target training error, images/s and the
    parameter count, each as mean +- std over seeds, and the differences to
    the baseline (the sweep's first variant) paired by seed, over the seeds
    where both runs finished with the same config (but for the swept fields
    and those that leave the numbers as they are); a note under the table
    names every run left out of a difference and why;
  - report.csv: the same numbers, unrounded; runs.csv: one row per run;
  - curves.png: training and validation top-1 error against steps.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
from collections.abc import Sequence

import numpy as np

from alexnet_jax import errors
from alexnet_jax.runs import config_json
from launch import comparisons, sweep

# (key, column title, is an error rate shown in percent)
METRICS = (
    ("final_top1", "final top-1 err %", True),
    ("final_top5", "final top-5 err %", True),
    ("best_top1", "best top-1 err %", True),
    ("best_top5", "best top-5 err %", True),
    ("steps_to_target", "steps to {target:.0%} train err", False),
    ("images_per_sec", "images/s", False),
)
DELTA_METRICS = ("final_top1", "final_top5", "best_top1", "steps_to_target")


@dataclasses.dataclass
class RunResult:
    name: str
    group: str  # the variant's name without its seed
    seed: int | None
    status: str  # sweep.FINISHED, "failed at step N (...)", "stopped at step N", "not started", ...
    metrics: dict[str, float]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # tag -> (steps, values)
    num_params: int | None
    config: dict | None = None  # its config.json's fields that must match to compare (None: no config.json)


def read_scalars(run_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag of a run's event files as (steps, values), by step.

    clu writes scalars as tensor summaries; a resumed run may log a step
    twice, and the later value wins.
    """
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    events = event_accumulator.EventAccumulator(run_dir, size_guidance={"tensors": 0})
    events.Reload()
    scalars = {}
    for tag in events.Tags()["tensors"]:
        if events.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        by_step = {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}
        steps = np.array(sorted(by_step))
        scalars[tag] = (steps, np.array([by_step[s] for s in steps]))
    return scalars


def run_metrics(scalars: dict[str, tuple[np.ndarray, np.ndarray]], target_error: float) -> dict[str, float]:
    """Summary numbers of one run; NaN where the run has not logged them yet."""
    nan = float("nan")
    result = {key: nan for key, _, _ in METRICS} | {"steps": nan}
    for k in ("top1", "top5"):
        if f"eval_{k}_error" in scalars:
            values = scalars[f"eval_{k}_error"][1]
            result[f"final_{k}"], result[f"best_{k}"] = float(values[-1]), float(values.min())
    if "train_top1_error" in scalars:
        steps, errors = scalars["train_top1_error"]
        reached = np.flatnonzero(errors <= target_error)
        result["steps_to_target"] = float(steps[reached[0]]) if reached.size else nan
        result["steps"] = float(steps[-1])
    if "images_per_sec" in scalars:
        rates = scalars["images_per_sec"][1]
        # The first period includes compilation: leave it out when there are others.
        result["images_per_sec"] = float(np.median(rates[1:] if rates.size > 1 else rates))
    return result


def run_status(run: sweep.Run, scalars: dict) -> str:
    """sweep.run_status (how launch.sweep and `--sweep` see the variant:
    finished, failed or stopped at step N, ...); a run that stopped without
    a word (killed) is "stopped at step N" (its last logged step) or "not started"."""
    status = sweep.run_status(run)
    if status != sweep.NOT_FINISHED:
        return status
    if not scalars:
        return "not started"
    return f"stopped at step {max(int(steps[-1]) for steps, _ in scalars.values())}"


def collect(workdir: str, target_error: float) -> tuple[dict, list[RunResult]]:
    path = os.path.join(workdir, sweep.MANIFEST)
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} not found: run `python -m launch.sweep ... --workdir {workdir}` first")
    with open(path) as f:
        manifest = json.load(f)
    swept = {field for entry in manifest["runs"] for field in entry["overrides"]}
    results = []
    for run in sweep.manifest_runs(workdir, manifest):
        overrides = dict(run.overrides)
        seed = overrides.pop("seed", None)
        try:
            record = config_json.load(run.workdir) if os.path.isdir(run.workdir) else None
        except ValueError:  # an unreadable config.json: its status says so
            record = None
        if record is not None:  # the run's own config: its seed even where the sweep did not set one
            seed = record["config"].get("seed", seed)
        scalars = read_scalars(run.workdir) if os.path.isdir(run.workdir) else {}
        metrics = run_metrics(scalars, target_error)
        status = run_status(run, scalars)
        num_params = int(scalars["num_params"][1][0]) if "num_params" in scalars else None
        curves = {tag: scalars[tag] for tag in ("train_top1_error", "eval_top1_error") if tag in scalars}
        config = comparisons.compared_fields(record, swept)
        group = sweep.variant_name(overrides)
        results.append(RunResult(run.name, group, seed, status, metrics, curves, num_params, config))
    return manifest, results


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan"), 0
    std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return float(np.mean(values)), std, len(values)


def summarise(results: list[RunResult]) -> list[dict]:
    """One row per group (variant without seed): mean/std over seeds and the
    differences to the first group, paired by seed (unpaired if no seed is
    shared) over the runs that finished with comparable configs; `notes`
    names the runs left out and why, and a group whose runs' configs differ."""
    groups: dict[str, list[RunResult]] = {}
    for result in results:
        groups.setdefault(result.group, []).append(result)
    baseline = groups[results[0].group]
    rows = []
    for name, runs in groups.items():
        finished = [r for r in runs if r.status == sweep.FINISHED]
        row = {"variant": name, "seeds": len(runs), "finished": len(finished)}
        row["num_params"] = next((r.num_params for r in runs if r.num_params), None)
        # A failed or interrupted run's numbers are partial: pooled only when no run finished.
        pooled = finished or runs
        for key, _, _ in METRICS:
            row[key], row[f"{key}_std"], row[f"{key}_n"] = _mean_std([r.metrics[key] for r in pooled])
        pairs, left_out = comparisons.comparable_pairs(runs, baseline)
        for key in DELTA_METRICS:
            if pairs and pairs[0][1] is None:  # no shared seed: the difference of the means
                base = [r.metrics[key] for r in baseline if r.status == sweep.FINISHED]
                deltas = [_mean_std([r.metrics[key] for r, _ in pairs])[0] - _mean_std(base)[0]]
            else:
                deltas = [r.metrics[key] - b.metrics[key] for r, b in pairs]
            row[f"{key}_delta"], row[f"{key}_delta_std"], _ = _mean_std(deltas)
        row["delta_runs"] = len(pairs)
        notes = []
        if left_out and runs is not baseline:
            notes.append(f"Δ over {len(pairs)} of {len(runs)} runs; left out: " + "; ".join(left_out) + ".")
        first = finished[0] if finished else None
        spread = [
            f"{comparisons.run_label(r)}: {d}"
            for r in finished[1:]
            if (d := comparisons.differences(r.config, first.config, comparisons.run_label(first)))
        ]
        if spread:
            notes.append("Its finished runs' configs differ (the means pool them): " + "; ".join(spread) + ".")
        row["notes"] = " ".join(notes)
        rows.append(row)
    return rows


def _fmt(value: float, std: float, percent: bool, signed: bool = False) -> str:
    if math.isnan(value):
        return "n/a"
    scale, digits = (100.0, 2) if percent else (1.0, 0)
    sign = "+" if signed else ""
    text = f"{value * scale:{sign}.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {std * scale:.{digits}f}"


def markdown(manifest: dict, rows: list[dict], target_error: float, title: str, workdir: str) -> str:
    command = f"python -m launch.sweep --config {manifest['config']} --sweep {manifest['sweep']} --workdir {workdir}"
    command += "".join(f" {arg}" for arg in manifest["extra_overrides"])
    lines = [
        f"# {title}",
        "",
        f"Sweep: `{command}`; baseline: `{manifest['baseline']}`.",
        "Errors on the evaluation split in percent, mean ± std over seeds; Δ = variant − baseline "
        "in points (steps for the steps column), paired by seed over the seeds where both runs finished "
        "with the same config (†: runs left out or unlike, see the notes below). `n/a`: not logged "
        "(not reached, or the run has not got there), or no comparable pair.",
        "",
    ]
    headers = ["variant", "runs"]
    for key, title_text, _ in METRICS:
        headers.append(title_text.format(target=target_error))
        if key in DELTA_METRICS:
            headers.append("Δ")
    headers.append("params")
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [f"`{row['variant']}`" + (" †" if row["notes"] else ""), f"{row['finished']}/{row['seeds']}"]
        for key, _, percent in METRICS:
            cell = _fmt(row[key], row[f"{key}_std"], percent)
            if key == "steps_to_target" and 0 < row[f"{key}_n"] < row["seeds"]:
                cell += f" ({row[f'{key}_n']} of {row['seeds']} reached)"
            cells.append(cell)
            if key in DELTA_METRICS:
                cells.append(_fmt(row[f"{key}_delta"], row[f"{key}_delta_std"], percent, signed=True))
        cells.append(f"{row['num_params']:,}" if row["num_params"] else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- † `{row['variant']}`: {row['notes']}" for row in rows if row["notes"]]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(results: list[RunResult], target_error: float, path: str) -> None:
    """Training and validation top-1 error per variant: the mean over seeds
    at the steps they share, shaded between the best and worst seed, each
    step marked where a curve has a single one (a run evaluated once); the
    legend counts the runs drawn (finished ones, when any finished)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    groups: dict[str, list[RunResult]] = {}
    for result in results:
        groups.setdefault(result.group, []).append(result)
    for ax, tag, title in zip(axes, ("train_top1_error", "eval_top1_error"), ("training", "validation")):
        for name, runs in groups.items():
            # A run that stopped early (e.g. diverged) would cut the shared steps short:
            # draw the finished runs when there are any.
            logged = [r for r in runs if tag in r.curves]
            curves = [r.curves[tag] for r in ([r for r in logged if r.status == "finished"] or logged)]
            if not curves:
                continue
            steps = curves[0][0]
            for other, _ in curves[1:]:
                steps = np.intersect1d(steps, other)
            values = np.stack([np.interp(steps, s, v) for s, v in curves]) * 100
            marker = "o" if len(steps) == 1 else None  # a line of one point draws nothing
            (line,) = ax.plot(steps, values.mean(axis=0), marker=marker, label=f"{name} ({len(curves)})")
            if len(curves) > 1:
                ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2)
        if tag == "train_top1_error":
            ax.axhline(target_error * 100, color="grey", linestyle="--", linewidth=1)
        ax.set(title=f"{title} top-1 error", xlabel="step", ylabel="top-1 error (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@errors.one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    parser = sweep.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="the sweep's --workdir")
    parser.add_argument("--out", help="where the report goes (default: the workdir)")
    parser.add_argument("--target_error", type=float, default=0.25, help="training top-1 error for 'steps to'")
    parser.add_argument("--title", default=None, help="the Markdown heading (default: the workdir)")
    args = parser.parse_args(argv)
    if not 0 < args.target_error < 1:
        raise SystemExit(f"error: --target_error={args.target_error} must be a fraction in (0, 1), e.g. 0.25")
    out = args.out or args.workdir
    sweep.check_local(args.workdir, "--workdir")
    sweep.check_local(out, "--out")
    config_json.check_writable(out, "--out")  # before the sweep's event files are read
    manifest, results = collect(args.workdir, args.target_error)
    if not any(r.status == "finished" for r in results):
        statuses = "; ".join(f"{r.name} {r.status}" for r in results)
        raise SystemExit(f"error: no run of the sweep in {args.workdir} finished ({statuses}): nothing to report")
    rows = summarise(results)
    report = markdown(manifest, rows, args.target_error, args.title or f"Sweep report: {args.workdir}", args.workdir)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(report)
    _write_csv(os.path.join(out, "report.csv"), rows)
    _write_csv(
        os.path.join(out, "runs.csv"),
        [
            {"run": r.name, "variant": r.group, "seed": r.seed, "status": r.status, "num_params": r.num_params}
            | r.metrics
            for r in results
        ],
    )
    plot_curves(results, args.target_error, os.path.join(out, "curves.png"))
    print(report)
    print(f"wrote report.md, report.csv, runs.csv and curves.png to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
