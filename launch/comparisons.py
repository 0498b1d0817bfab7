"""Which runs of a sweep compare: launch.report's differences pair a
variant's run with the baseline's only where both finished with the same
config.json, but for the swept fields and those that leave the numbers as
they are; every run left out gets a reason."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from alexnet_jax.runs import config_fields, field_rules, sweep_status

if TYPE_CHECKING:
    from launch.run_results import RunResult

# Fields a restart may change (field_rules.MAY_CHANGE) leave a run's numbers as they are, except these: the run's
# length and schedule, what its evaluations measure, and how often (the best error is over the evaluations).
COMPARED_MAY_CHANGE = frozenset(
    {"num_epochs", "num_train_steps", "optimizer.drop_epochs", "eval_views", "eval_every_steps"}
)


def compared_fields(record: dict | None, swept: set[str]) -> dict | None:
    """The fields of a run's config.json that must match for two runs' numbers
    to compare: all but the swept ones, the seed (runs are paired by it) and
    those that leave the numbers as they are."""
    if record is None:
        return None
    ignored = swept | {"seed"} | (field_rules.MAY_CHANGE.keys() - COMPARED_MAY_CHANGE)
    return {k: v for k, v in config_fields.flat_fields(record["config"]).items() if k not in ignored}


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(config: dict | None, other: dict | None, other_name: str) -> str:
    """`num_train_steps=60 (baseline: 100), ...`: the compared fields where
    `config` differs from `other` ("" where equal, or where either run has no
    config.json: a run from before it was written)."""
    if config is None or other is None:
        return ""
    changed = sorted(k for k in config.keys() & other.keys() if config[k] != other[k])
    return ", ".join(f"{k}={_short(config[k])} ({other_name}: {_short(other[k])})" for k in changed)


def run_label(run: RunResult) -> str:
    return run.name if run.seed is None else f"seed {run.seed}"


def comparable_pairs(runs: list[RunResult], baseline: list[RunResult]) -> tuple[list[tuple], list[str]]:
    """(pairs, left out): a variant's runs that finished, each with the
    baseline's finished run of its seed (or, when no seed is shared, with
    None: the difference of the means), where their configs match; and one
    reason for each run left out."""
    by_seed = {r.seed: r for r in baseline}
    paired = any(r.seed in by_seed for r in runs)
    reference = next((r for r in baseline if r.status == sweep_status.FINISHED), None)
    pairs, left_out = [], []
    for run in runs:
        partner = by_seed.get(run.seed) if paired else reference
        if run.status != sweep_status.FINISHED:
            left_out.append(f"{run_label(run)}: {run.status}")
        elif partner is None:
            reason = "the baseline has no run of this seed" if paired else "no baseline run finished"
            left_out.append(f"{run_label(run)}: {reason}")
        elif partner.status != sweep_status.FINISHED:
            left_out.append(f"{run_label(run)}: the baseline's run {partner.status}")
        elif diff := differences(run.config, partner.config, "baseline"):
            left_out.append(f"{run_label(run)}: its config differs from the baseline's: {diff}")
        else:
            pairs.append((run, partner if paired else None))
    return pairs, left_out
