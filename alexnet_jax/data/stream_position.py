"""Where the training stream stands, and what a checkpoint's saved position
must match to name the same examples when the run resumes.

The training stream is a deterministic function of (seed, epoch): a resumed
run starts at its `StreamPosition` (epoch, batch within it) instead of
replaying the stream (alexnet_jax.data.pipeline).
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import tensorflow_datasets as tfds

from alexnet_jax import errors
from alexnet_jax.data import multihost


def num_examples(builder: tfds.core.DatasetBuilder, split) -> int:
    return builder.info.splits[split].num_examples


def local_batch_size(config: ml_collections.ConfigDict, global_batch: int) -> int:
    return global_batch // multihost.config_data_part(config).count


def steps_per_epoch(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> int:
    """Batches per epoch, the same on every process: the smallest data part
    (even splits differ by at most one example) in local batches."""
    smallest_part = num_examples(builder, config.train_split) // multihost.config_data_part(config).count
    return smallest_part // local_batch_size(config, config.batch_size)


@dataclasses.dataclass(frozen=True)
class StreamPosition:
    """Where the training stream stands: `batch` batches of epoch `epoch` consumed."""

    epoch: int = 0
    batch: int = 0

    @classmethod
    def at_step(cls, step: int, steps_per_epoch: int) -> StreamPosition:
        return cls(step // steps_per_epoch, step % steps_per_epoch)

    def advanced(self, batches: int, steps_per_epoch: int) -> StreamPosition:
        return StreamPosition.at_step(self.epoch * steps_per_epoch + self.batch + batches, steps_per_epoch)


# Saved with each checkpoint: what must match for the position to mean the
# same examples when the run resumes. The data parts, not the processes: two
# processes holding the towers of one pair read what one process would.
_MUST_MATCH = ("batch_size", "data_parts", "seed", "dataset", "train_split")


def position_record(config: ml_collections.ConfigDict, position: StreamPosition, step: int, steps: int) -> dict:
    """The JSON item saved next to the train state after `step` (`steps` per epoch)."""
    return {
        "epoch": position.epoch,
        "batch_in_epoch": position.batch,
        "examples_seen": step * config.batch_size,
        "steps_per_epoch": steps,
        "local_batch_size": local_batch_size(config, config.batch_size),
        "batch_size": config.batch_size,
        "data_parts": multihost.config_data_part(config).count,
        "process_count": jax.process_count(),
        "seed": config.seed,
        "dataset": config.dataset,
        "train_split": config.train_split,
    }


def resume_position(config: ml_collections.ConfigDict, saved: dict | None, step: int, steps: int) -> StreamPosition:
    """Where the stream continues after the checkpoint of `step`.

    The saved position is used as is; if the dataset's size changed since,
    the epoch and batch stay and the epoch's length follows the new data. A
    checkpoint without one (written before positions were saved) resumes at
    `StreamPosition.at_step`. Raises ValueError (one line) when the batch
    size, number of data parts, seed, dataset or split differ from the
    checkpoint's: its position would then name other examples.
    """
    if saved is None:
        return StreamPosition.at_step(step, steps)
    current = position_record(config, StreamPosition(), step, steps)
    # Positions saved before data parts were recorded: one part per process then.
    saved = {"data_parts": saved.get("process_count"), **saved}
    for field in _MUST_MATCH:
        if saved.get(field) != current[field]:
            parts = "the number of data parts (config.mesh over the processes)"
            where = parts if field == "data_parts" else f"config.{field}"
            raise errors.RunError(
                f"the checkpoint of step {step} was written with {field}={saved.get(field)!r} but {where} is "
                f"now {current[field]!r}: resume with the same value, or start a new --workdir"
            )
    return StreamPosition(saved["epoch"], saved["batch_in_epoch"]).advanced(0, steps)
