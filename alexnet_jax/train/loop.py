"""The training loop: set-up (setup.py) once, then the jitted steps of
steps.py over the dataset with their periodic actions (periodic.py: inspect,
log, evaluate, save), the NaN guard (finite_guard.py), a clean stop on
SIGTERM/SIGINT (preemption.py) and how the run ended noted in config.json."""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from alexnet_jax.files import folder_lock
from alexnet_jax.runs import run_notes
from alexnet_jax.train import checkpointing, periodic, setup
from alexnet_jax.train.preemption import Preempted, StopSignals


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, float]:
    """Trains (resuming from `workdir` if it holds checkpoints) and evaluates.
    `workdir` is a local path or a URI (gs://...), a string or a path-like.

    Returns the final evaluation summary (eval_loss, eval_top1_error, ...).
    Raises ConfigError (bad config) or DatasetUnavailableError before writing
    anything to `workdir`, Diverged on a non-finite loss, and
    Preempted after saving the step at which SIGTERM or SIGINT stopped the loop.
    Refuses a workdir that another live run holds (folder_lock.FolderInUseError).
    """
    with folder_lock.RunLock() as run_lock:  # released on every exit: finished, failed or stopped
        return _train(setup.set_up(config, workdir, run_lock))


def _train(run: setup.Run) -> dict[str, float]:
    """The steps from run.start_step + 1 to run.total_steps and their actions."""
    progress = periodic.Progress(state=run.state, step=run.start_step)
    act = periodic.Actions(run, progress)
    stop, stopping = StopSignals(on_stop=lambda signal_name: _note_stop(run, signal_name)).install(), False
    try:
        for step in range(run.start_step + 1, run.total_steps + 1):
            if stopping:  # a stop signal, and the step before this one is saved
                raise Preempted(step - 1)
            progress.step = step
            batch = next(run.train_iter)
            act.inspect(step, batch=batch)  # before the step: it donates the state
            _train_step(run, progress, act, batch)
            act.report(step)
            act.log(step)
            act.evaluate(step)
            # A stop signal: save this step as the periodic save does, then stop (Preempted above).
            stopping = stop.requested(step - run.start_step) and step < run.total_steps
            act.save(step, now=stopping)
    except Preempted as stopped:
        _note_exit(run, "stopped", stopped.step, str(stopped))
        raise
    except Exception as error:  # the workdir says where and why the run stopped (launch.report)
        _note_exit(run, "failed", progress.step, f"{type(error).__name__}: {error}")
        raise
    finally:
        checkpointing.wait_until_finished(run.manager)
        run.writer.flush()
        stop.restore()  # after the wait: a repeated SIGTERM must not cut the save short

    if progress.summary is None:  # resumed a finished run: evaluate the restored state
        progress.summary = act.run_eval(run.total_steps)
        run.writer.flush()
    _note_exit(run, "finished", run.total_steps)
    return progress.summary


def _train_step(run: setup.Run, progress: periodic.Progress, act: periodic.Actions, batch: Any) -> None:
    """One update of progress.state; its loss is read HOST_LEAD_STEPS steps later (finite_guard)."""
    first = progress.step == run.start_step + 1  # its call compiles: no training step's time
    if first:
        act.rate.pause("compile")
    progress.state, step_metrics = run.train_fn(progress.state, batch, run.base_key)
    if first:
        act.rate.resume(step_metrics)
    else:
        act.rate.step_done()
    act.in_flight.add(progress.step, step_metrics)
    merged = progress.train_metrics
    progress.train_metrics = step_metrics if merged is None else merged.merge(step_metrics)


def _note_exit(run: setup.Run, status: str, step: int, error: str | None = None) -> None:
    if jax.process_index() == 0:
        run_notes.record_exit(run.workdir, status, step, error)


def _note_stop(run: setup.Run, signal_name: str) -> None:
    """A second Ctrl-C ends the process at once: the stop is noted at the first."""
    if jax.process_index() == 0:
        run_notes.record_interrupted(run.workdir, signal_name, checkpointing.latest_step(run.workdir))
