"""Stopping a run cleanly on SIGTERM or SIGINT (SLURM's warning before the
time limit, a preemptible VM's notice, TPU maintenance, Ctrl-C).

The train loop asks `StopSignals.requested(steps_done)` at every step
boundary; when it says yes, the loop saves a checkpoint of that step, waits
for it and raises `Preempted`, which main.py turns into exit status
`EXIT_STATUS`. Rerunning the same command resumes from that checkpoint.

One process: a Python handler sets a flag the loop reads. Several processes
(jax.distributed): every process must stop at the same step and take part in
the same save, whichever got the signal, so the step comes from JAX's
preemption sync point: jax.distributed.initialize installs a SIGTERM notifier
that tells the other processes through the coordination service, and
`multihost_utils.reached_preemption_sync_point` turns true at the same step
on all of them (tested on CPU with gloo on loopback). SIGINT is turned into
that notice by sending this process a SIGTERM.

A second SIGINT ends the process at once (the default action: exit status
130, 128 + SIGINT, in a shell), even inside a long compilation or step; the
newest complete checkpoint stays intact, since orbax writes into a temporary
folder and renames it when complete (the next start removes that folder).
A process killed so cannot write anything, so the first signal already calls
`on_stop`, which records the run as "interrupted" (train.py); the stop's own
end (saved, finished or failed) overwrites that record. Repeated SIGTERMs are
ignored: schedulers and launch scripts may both send one, and that must not
cut the save short.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import types
from collections.abc import Callable
from typing import Any

import jax
from jax.experimental import multihost_utils

# Exit status of a run stopped by a signal after saving its checkpoint: not
# 143 (128 + SIGTERM), which a shell also reports for a process killed by
# SIGTERM before it could save; 3 means "saved, rerun the command to go on".
EXIT_STATUS = 3


class Preempted(BaseException):
    """Raised by the train loop after saving the checkpoint of `step` (written
    when the loop's `finally` has waited for it). Like KeyboardInterrupt, a
    stop rather than an error: `except Exception` handlers do not catch it."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped by a signal after step {step}; its checkpoint is saved: rerun to resume")
        self.step = step


class StopSignals:
    """The SIGTERM/SIGINT handlers of the train loop: `install` them before
    it, `restore` the previous ones after it (and after its last save).
    `on_stop(signal_name)` is called once, when this process learns of the
    first stop signal (its own, or another process's at the sync point)."""

    def __init__(self, on_stop: Callable[[str], None] | None = None) -> None:
        self._received: str | None = None  # the first signal's name
        self._on_stop = on_stop
        self._told = False
        self._previous: dict[int, Any] = {}
        self._sync_point = False  # several processes: JAX's sync point decides

    def install(self) -> StopSignals:
        if jax.process_count() > 1:
            try:
                multihost_utils.reached_preemption_sync_point(0)  # raises if JAX's service is off
            except RuntimeError as error:
                # A local flag would stop this process alone and leave the
                # others waiting at a collective: keep the default actions.
                logging.warning("No clean stop on signals: %s", error)
                return self
            self._sync_point = True
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers: SIGINT keeps its default action
        # Several processes: SIGTERM stays with JAX's notifier (see above).
        signums = [signal.SIGINT] if self._sync_point else [signal.SIGINT, signal.SIGTERM]
        for signum in signums:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            # The next Ctrl-C kills the process without waiting for anything.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        if self._received is not None:
            logging.warning("%s received again: still stopping after the step in flight", name)
            return
        self._received = name
        self._tell(name)  # before the line below: once it is logged, the note is written
        logging.warning(
            "%s received: stopping after the step in flight and its checkpoint (SIGINT again: stop at once)", name
        )
        if self._sync_point:
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier tells the other processes

    def requested(self, steps_done: int) -> bool:
        """Whether to save and stop after `steps_done` steps of this launch
        (counted from the restored step, the same on every process)."""
        if not self._sync_point:
            return self._received is not None
        if not multihost_utils.reached_preemption_sync_point(steps_done):
            return False
        logging.warning("A process got SIGTERM or SIGINT: every process stops after this launch's step %d", steps_done)
        self._tell(self._received or "SIGTERM")
        return True

    def _tell(self, name: str) -> None:
        if self._told or self._on_stop is None:
            return
        self._told = True
        try:
            self._on_stop(name)
        except Exception as error:  # in a signal handler: must not raise into whatever code it interrupted
            logging.warning("Could not note the stop signal (%s: %s)", type(error).__name__, error)
