"""The train loop's periodic work as named actions: inspect (before a step),
log, evaluate and save (after one), each a clu `PeriodicCallback` over the
shared `Progress`, plus clu's `ReportProgress`.

Every action but the progress report first waits for the steps in flight,
pauses the throughput clock (TrainingThroughput: images_per_sec counts the
training steps alone) and resumes it when done."""

from __future__ import annotations

import dataclasses
from typing import Any

from clu import periodic_actions

from alexnet_jax.data import pipeline
from alexnet_jax.parallel import sharding
from alexnet_jax.train import checkpointing, evaluation, finite_guard, metrics, plateau, steps, summaries, throughput
from alexnet_jax.train.setup import Run


@dataclasses.dataclass
class Progress:
    """What the steps change, read and changed by the actions too."""

    state: steps.TrainState
    step: int  # the step running (the restored one before the first)
    train_metrics: metrics.TrainMetrics | None = None  # since the last log line
    summary: dict[str, float] | None = None  # the newest evaluation's


class _OrWhenAsked(periodic_actions.PeriodicCallback):
    """clu's PeriodicCallback, also triggered when the caller asks (`now=True`)."""

    _asked = False

    def __call__(self, step: int, t: float | None = None, now: bool = False, **kwargs: Any) -> bool:
        self._asked = now
        return super().__call__(step, t, **kwargs)

    def _should_trigger(self, step: int, t: float) -> bool:
        return self._asked or super()._should_trigger(step, t)


class Actions:
    """The named actions; call each at every step (`every_steps`, and the last step, trigger it)."""

    def __init__(self, run: Run, progress: Progress) -> None:
        config, last = run.config, {run.total_steps}
        self.run, self.progress = run, progress
        self.report = periodic_actions.ReportProgress(num_train_steps=run.total_steps, writer=run.writer)
        # images_per_sec of the training steps alone: evaluations, inspections and saves paused.
        self.rate = throughput.TrainingThroughput(config.batch_size, self.report)
        self.in_flight = finite_guard.InFlight()
        self._replicated = sharding.replicated(run.mesh)
        Callback = periodic_actions.PeriodicCallback
        first_and_last = {run.start_step + 1, run.total_steps}
        every_inspection = config.inspect_every_steps or None  # 0: never, not even the first and last steps
        inspect_on = first_and_last if every_inspection else set()
        self.inspect = Callback(every_steps=every_inspection, on_steps=inspect_on, callback_fn=self._inspect)
        self.log = Callback(every_steps=config.log_every_steps, on_steps=last, callback_fn=self._log)
        self.evaluate = Callback(every_steps=config.eval_every_steps, on_steps=last, callback_fn=self._evaluate)
        # now=True: a stop signal's save (then the loop stops).
        self.save = _OrWhenAsked(every_steps=config.checkpoint_every_steps, on_steps=last, callback_fn=self._save)

    def run_eval(self, step: int) -> dict[str, float]:
        """Evaluates the current parameters and writes the summary at `step`."""
        run = self.run
        batches = run.eval_batches()
        results = evaluation.evaluate(run.eval_fn, self.progress.state.params, batches, run.mesh)
        summary = evaluation.eval_summary(results)
        run.writer.write_scalars(step, summary)
        return summary

    def _inspect(self, step: int, t: float, batch: Any) -> None:
        run, state = self.run, self.progress.state
        self.rate.pause("inspect", self.in_flight.newest())
        # Histograms of non-finite weights would fail in the writer's
        # thread and hide the real error: stop here, naming the step.
        self.in_flight.check_newest()
        finite_guard.check_params(state.params, f"parameters are not finite before step {step}: stopping")
        # Before the step: train_fn donates the state it is given.
        summaries.write_inspection(run.writer, step, run.inspect_fn(state, batch, run.base_key), run.config)
        self.rate.resume()

    def _log(self, step: int, t: float) -> None:
        self.in_flight.check_newest()
        scalars = {f"train_{k}": float(v) for k, v in self.progress.train_metrics.compute().items()}
        if (images_per_sec := self.rate.images_per_sec()) is not None:  # None: no step timed
            scalars["images_per_sec"] = images_per_sec
        self.run.writer.write_scalars(step, scalars)
        self.progress.train_metrics = None

    def _evaluate(self, step: int, t: float) -> None:
        config, progress = self.run.config, self.progress
        self.rate.pause("eval", self.in_flight.newest())
        progress.summary = self.run_eval(step)
        if config.optimizer.schedule == "plateau":
            error = progress.summary["eval_top1_error"]
            progress.state = plateau.plateau_step(progress.state, error, config.optimizer, self._replicated)
        self.rate.resume(progress.state)

    def _save(self, step: int, t: float) -> None:
        run, state = self.run, self.progress.state
        self.rate.pause("save", self.in_flight.newest())
        self.in_flight.check_newest()
        finite_guard.check_params(state.params, f"parameters are not finite after step {step}: not saving them")
        position = run.position.advanced(step - run.start_step, run.steps_per_epoch)
        data = pipeline.position_record(run.config, position, step, run.steps_per_epoch)
        checkpointing.save(run.manager, step, state, data)
        self.rate.resume()
