"""launch.report's tables: one row per variant (seeds pooled) with the
differences to the baseline paired by seed, as Markdown and CSV."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence

import numpy as np

from alexnet_jax.runs import sweep_status
from launch import comparisons
from launch.run_results import METRICS, RunResult

DELTA_METRICS = ("final_top1", "final_top5", "best_top1", "steps_to_target")


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
        finished = [r for r in runs if r.status == sweep_status.FINISHED]
        row = {"variant": name, "seeds": len(runs), "finished": len(finished)}
        row["num_params"] = next((r.num_params for r in runs if r.num_params), None)
        # A failed or interrupted run's numbers are partial: pooled only when no run finished.
        pooled = finished or runs
        for key, _, _ in METRICS:
            row[key], row[f"{key}_std"], row[f"{key}_n"] = _mean_std([r.metrics[key] for r in pooled])
        pairs, left_out = comparisons.comparable_pairs(runs, baseline)
        for key in DELTA_METRICS:
            if pairs and pairs[0][1] is None:  # no shared seed: the difference of the means
                base = [r.metrics[key] for r in baseline if r.status == sweep_status.FINISHED]
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


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
