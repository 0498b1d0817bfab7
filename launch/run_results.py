"""A sweep's runs as launch.report sees them: each variant's status, its
summary numbers read from its TensorBoard event files (the same ones
TensorBoard shows) and its learning curves.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from alexnet_jax.runs import config_json, sweep_status
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


@dataclasses.dataclass
class RunResult:
    """One run of the sweep as the report sees it."""

    name: str
    group: str  # the variant's name without its seed
    seed: int | None
    status: str  # sweep_status.FINISHED, "failed at step N (...)", "stopped at step N", "not started", ...
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


def run_status(run: sweep_status.Run, scalars: dict) -> str:
    """sweep_status.run_status (how launch.sweep and `--sweep` see the variant:
    finished, failed or stopped at step N, ...); a run that stopped without
    a word (killed) is "stopped at step N" (its last logged step) or "not started"."""
    status = sweep_status.run_status(run)
    if status != sweep_status.NOT_FINISHED:
        return status
    if not scalars:
        return "not started"
    return f"stopped at step {max(int(steps[-1]) for steps, _ in scalars.values())}"


def collect(workdir: str, target_error: float) -> tuple[dict, list[RunResult]]:
    path = os.path.join(workdir, sweep_status.MANIFEST)
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} not found: run `python -m launch.sweep ... --workdir {workdir}` first")
    with open(path) as f:
        manifest = json.load(f)
    swept = {field for entry in manifest["runs"] for field in entry["overrides"]}
    results = []
    for run in sweep_status.manifest_runs(workdir, manifest):
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
