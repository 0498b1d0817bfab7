"""Evaluating runs and ensembles of runs: the paper's "5 CNNs" averages the
class probabilities of several networks (docs/paper.md, Results).

Each member is evaluated with its own config (from its workdir), its own
training-set statistics and views; its probabilities over the split are kept
on the host, (examples, classes) float32 (ImageNet's validation set: 200 MB
per member), and the ensemble's are their mean.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax import errors
from alexnet_jax.data import pipeline
from alexnet_jax.inference import predictions
from alexnet_jax.parallel import sharding
from alexnet_jax.runs import config_fields, run_stats
from alexnet_jax.train import metrics, setup, steps


@dataclasses.dataclass
class Member:
    """One run's probabilities on the evaluation split, in the split's order."""

    workdir: str
    config: ml_collections.ConfigDict
    step: int
    probs: np.ndarray  # (examples, classes) float32
    labels: np.ndarray  # (examples,) int


def summary(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The evaluation summary (as the training loop writes it) of class probabilities."""
    outputs = metrics.per_example_outputs(jnp.log(jnp.asarray(probs)), jnp.asarray(labels))
    result = {f"eval_{k}": float(jnp.mean(v)) for k, v in outputs.items()}
    result["eval_num_examples"] = len(labels)
    return result


def evaluate_member(config: ml_collections.ConfigDict, workdir: str) -> Member:
    """The newest checkpoint of `workdir` on `config.eval_split`: every
    example once (the last batch's padding dropped), centre or 10 views."""
    builder = pipeline.get_builder(config)
    setup.check_dataset(config, builder)  # splits and classes, as the training run checks them
    model, params, step = predictions.restore_params(config, workdir)
    mesh = sharding.make_mesh(config.mesh)
    stats = run_stats.for_reading(config, workdir, builder).stats  # the run's own, not the data_dir's now

    def probs_labels_mask(params, batch):
        probs = steps.eval_probs(params, batch["image"], config=config, model=model, stats=stats)
        return probs, batch["label"], batch["mask"]

    # Replicated outputs: every process holds the whole global batch's rows.
    probs_fn = jax.jit(
        sharding.partitioned(probs_labels_mask, mesh, config.model_parallel), out_shardings=sharding.replicated(mesh)
    )
    probs, labels = [], []
    for local_batch in pipeline.eval_batches(config, builder):
        batch_probs, batch_labels, mask = (
            np.asarray(x) for x in probs_fn(params, sharding.global_batch(local_batch, mesh))
        )
        keep = mask.astype(bool)
        probs.append(batch_probs[keep].astype(np.float32))
        labels.append(batch_labels[keep])
    return Member(workdir, config, step, np.concatenate(probs), np.concatenate(labels))


# What an ensemble's members must share: the same examples, the same classes.
SAME_TASK = ("dataset", "image_folder", "eval_split", "model.num_classes")


def check_same_task(
    workdirs: list[str], configs: list[ml_collections.ConfigDict], fields: tuple[str, ...] = SAME_TASK
) -> None:
    """One-line ValueError if the runs differ in a field of `fields`."""
    for workdir, config in zip(workdirs[1:], configs[1:]):
        for field in fields:
            ours, theirs = config_fields.field_value(configs[0], field), config_fields.field_value(config, field)
            if ours != theirs:
                raise errors.RunError(
                    f"ensemble members disagree on config.{field}: {workdirs[0]} has {ours!r}, "
                    f"{workdir} has {theirs!r}; an ensemble averages class probabilities of the same classes"
                )


def check_same_order(first: Member, other: Member) -> None:
    """Members' probabilities must be rows of the same examples."""
    if not np.array_equal(first.labels, other.labels):
        raise errors.RunError(
            f"{first.workdir} and {other.workdir} read {first.config.eval_split} in different orders "
            "(different prepared data or process layout?): evaluate them on the same prepared data"
        )


def ensemble_probs(members: list[Member]) -> np.ndarray:
    """The mean of the members' class probabilities (the paper's ensemble)."""
    total = functools.reduce(np.add, (m.probs.astype(np.float64) for m in members))  # one member's size at a time
    return (total / len(members)).astype(np.float32)
