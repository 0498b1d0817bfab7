"""The stages of bench.memory: a sampler thread that keeps each stage's peak
resident memory, and hooks that mark the stages around the run's own
functions (set-up, the jitted programs' first calls, the loop's actions).

The hooks replace module attributes the run looks up at call time
(`steps.make_train_fn`, `periodic.Actions._inspect`, ...), so the run is the
real one; they add only a compile of each jitted program ahead of its first
call (`.lower(...).compile()`: JAX reuses that executable at the call, so
nothing compiles twice) and, unless `overlap`, a wait after each step and
action for its asynchronous work (the step's computation, summary writes,
checkpoint writes) so its memory is counted in its own stage rather than in
the one that follows."""

from __future__ import annotations

import dataclasses
import functools
import resource
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

SAMPLE_SECONDS = 0.005  # RSS sampling period: long enough to cost nothing, short enough for a compile's peak


@dataclasses.dataclass
class Stage:
    name: str
    seconds: float
    peak_mb: float  # the stage's own peak RSS (sampled, and at its ends)
    max_rss_mb: float  # the process's peak so far (ru_maxrss)
    rss_mb: float  # RSS when the stage ended


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Stages:
    """A timeline of named stages; `enter(name)` ends the current one."""

    def __init__(self, first: str) -> None:
        self._process = psutil.Process()
        self._lock = threading.Lock()
        self._name, self._start, self._peak = first, time.perf_counter(), self._rss_mb()
        self._stack: list[str] = []
        self.done: list[Stage] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _rss_mb(self) -> float:
        return self._process.memory_info().rss / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            rss = self._rss_mb()
            with self._lock:
                self._peak = max(self._peak, rss)

    def enter(self, name: str) -> None:
        rss = self._rss_mb()
        with self._lock:
            peak = max(self._peak, rss, 0.0)
            now = time.perf_counter()
            self.done.append(Stage(self._name, now - self._start, peak, _max_rss_mb(), rss))
            self._name, self._start, self._peak = name, now, rss

    def current(self) -> str:
        return self._name

    def around(self, name: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` as stage `name`; then back to the stage it interrupted."""
        outer = self._name
        self.enter(name)
        try:
            return fn(*args, **kwargs)
        finally:
            self.enter(outer if outer.endswith("(cont.)") else f"{outer} (cont.)")

    def close(self) -> list[Stage]:
        self.enter("")
        self._stop.set()
        self._thread.join()
        return self.done


class _CompileFirst:
    """A jitted program whose first call is preceded by its compile, as a stage of its own."""

    def __init__(self, stages: Stages, name: str, fn: Any) -> None:
        self._stages, self._name, self._fn, self._compiled = stages, name, fn, False
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any) -> Any:
        if not self._compiled:
            self._compiled = True
            self._stages.around(f"compile {self._name}", lambda: self._fn.lower(*args).compile())
        return self._fn(*args)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._fn, attr)


class _FirstNext:
    """An iterator whose first `next` (the prefetch of the first batches) is a stage."""

    def __init__(self, stages: Stages, name: str, batches: Iterator) -> None:
        self._stages, self._name, self._batches, self._first = stages, name, batches, True

    def __iter__(self) -> _FirstNext:
        return self

    def __next__(self) -> Any:
        if self._first:
            self._first = False
            return self._stages.around(self._name, next, self._batches)
        return next(self._batches)


def install(stages: Stages, overlap: bool = False) -> Callable[[], None]:
    """Marks the run's stages; returns the function that removes the hooks."""
    from alexnet_jax.parallel import sharding
    from alexnet_jax.train import checkpointing, inspection, loop, micro_batch, periodic, setup, steps

    saved: list[tuple[Any, str, Any]] = []

    def replace(owner: Any, attr: str, make: Callable[[Any], Any]) -> None:
        original = getattr(owner, attr)
        saved.append((owner, attr, original))
        setattr(owner, attr, make(original))

    def stage(name: str) -> Callable[[Any], Any]:
        return lambda original: lambda *a, **k: stages.around(name, original, *a, **k)

    replace(setup, "set_up", lambda original: lambda *a, **k: _set_up(stages, original, *a, **k))
    replace(steps, "create_train_state", stage("state: initialise"))
    replace(setup, "_restore", stage("state: restore (none: a new workdir)"))
    replace(micro_batch, "time_candidates", stage("micro-batch timing (the first run's)"))

    def train_fn(original: Any) -> Any:
        def make(config, *args, **kwargs):
            micro = config.micro_batch_size
            name = f"train step (micro_batch_size={micro})" if micro else "train step (whole batch)"
            return _CompileFirst(stages, name, original(config, *args, **kwargs))

        return make

    replace(steps, "make_train_fn", train_fn)

    def compiled(name: str) -> Callable[[Any], Any]:
        return lambda original: lambda *a, **k: _CompileFirst(stages, name, original(*a, **k))

    replace(steps, "make_eval_fn", compiled("evaluation step"))
    replace(inspection, "make_inspect_fn", compiled("inspection step"))

    def first_next(original: Any) -> Any:
        return lambda *a, **k: _FirstNext(stages, "data: first batches on the devices", original(*a, **k))

    replace(sharding, "prefetch_to_device", first_next)

    def train_step(original: Any) -> Any:
        return lambda run, progress, *a: _step(stages, original, run, progress, *a, wait=not overlap)

    replace(loop, "_train_step", train_step)

    def action(name: str, wait: Callable[[Any], None]) -> Callable[[Any], Any]:
        def make(original: Any) -> Any:
            def act(self, step, *a, **k):
                def body():
                    original(self, step, *a, **k)
                    if not overlap:  # its asynchronous part counted here, not in the next step
                        wait(self.run)

                return stages.around(f"{name} (step {step})", body)

            return act

        return make

    replace(periodic.Actions, "_inspect", action("inspection + summaries written", lambda run: run.writer.flush()))
    replace(periodic.Actions, "_evaluate", action("evaluation", lambda run: run.writer.flush()))
    saved_files = action("save (orbax, written)", lambda run: checkpointing.wait_until_finished(run.manager))
    replace(periodic.Actions, "_save", saved_files)

    def restore() -> None:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)

    return restore


def _set_up(stages: Stages, original: Callable, *args: Any, **kwargs: Any) -> Any:
    stages.enter("set-up: checks, data, workdir")
    run = original(*args, **kwargs)
    stages.enter("train loop")
    return run


def _step(stages: Stages, original: Callable, run: Any, progress: Any, *args: Any, wait: bool) -> None:
    import jax

    name = "first train step" if progress.step == run.start_step + 1 else "train steps"

    def body() -> None:
        original(run, progress, *args)
        if wait:  # the step's own memory in its stage (a real run queues the next ones)
            jax.block_until_ready(progress.state)

    if stages.current().startswith(name):  # consecutive steps: one stage
        body()
    else:
        stages.around(name, body)
