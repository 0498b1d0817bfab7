"""Exact evaluation of the parameters over a pass of the evaluation split."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax

from alexnet_jax.parallel import sharding
from alexnet_jax.train import metrics


def evaluate(eval_fn, params: Any, batches: Iterator[dict], mesh: jax.sharding.Mesh) -> metrics.EvalMetrics:
    total = None
    for local_batch in batches:
        batch_metrics = eval_fn(params, sharding.global_batch(local_batch, mesh))
        total = batch_metrics if total is None else total.merge(batch_metrics)
    return total


def eval_summary(eval_metrics: metrics.EvalMetrics) -> dict[str, float]:
    """Host floats of the metrics, with `eval_num_examples` (the examples counted)."""
    results = {f"eval_{k}": float(v) for k, v in eval_metrics.compute().items()}
    results["eval_num_examples"] = eval_metrics.num_examples()
    return results
