"""What a training run adds to its config.json as it goes: how it last ended
(finished, stopped, failed, interrupted) and the micro-batch sizes its steps
computed with, so a report need not guess from the logs."""

from __future__ import annotations

import os

from alexnet_jax.runs import config_json


def record_exit(workdir: str | os.PathLike, status: str, step: int, error: str | None = None) -> None:
    """Notes in config.json how the run last ended ("finished", "stopped" by
    a signal after saving `step`, "failed" at `step` with `error`, or
    "interrupted": see record_interrupted), so a report need not guess from
    the logs."""
    record = config_json.load(workdir)
    if record is None:  # a workdir from before config.json
        return
    record["last_exit"] = {"status": status, "step": step, "error": error, "time": config_json.now()}
    config_json.write(workdir, record)


def record_interrupted(workdir: str | os.PathLike, signal_name: str, newest_step: int) -> None:
    """Notes at the first stop signal that the run is "interrupted" at the
    newest checkpoint's step; the stop's own end (stopped, finished, failed)
    replaces it, so it stays only when the process was ended before (a
    second Ctrl-C, a kill after the signal)."""
    note = f"{signal_name} received, then ended before saving (a second Ctrl-C or a kill)"
    record_exit(workdir, "interrupted", newest_step, f"{note}: a rerun resumes from step {newest_step}")


def record_micro_batch_size(workdir: str | os.PathLike, from_step: int, micro_batch_size: int) -> None:
    """Notes in config.json the micro-batch size the steps from `from_step`
    on compute with (0: the whole batch), when it differs from the last one
    noted: `micro_batch_size=-1` is resolved per machine, and dropout's
    random stream depends on it."""
    record = config_json.load(workdir)
    if record is None:  # a workdir from before config.json
        return
    sizes = record.setdefault("micro_batch_sizes", [])
    if sizes and sizes[-1]["micro_batch_size"] == micro_batch_size:
        return
    sizes.append({"from_step": from_step, "micro_batch_size": micro_batch_size})
    config_json.write(workdir, record)
