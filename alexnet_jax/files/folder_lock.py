"""Lock files for jobs that share a folder: one live run per workdir, and one
job at a time preparing a dataset, a cache part or the statistics of a
shared data_dir while the others wait, then find it prepared.

A lock is a small JSON file beside what it guards naming its holder (host,
pid, since when) and a heartbeat: a daemon thread of the holder rewrites the
time in it every `HEARTBEAT_S`. It is created atomically, also on a network
file system, and best effort through a URI (alexnet_jax.files.lock_file).

A lock left by a killed run (kill -9, a lost node) is stale and taken over:
on the holder's host when its process is gone (pid, and on Linux the
process's start time, so a reused pid does not count); from another host when
its heartbeat stops: older than `STALE_AFTER_S` by this host's clock, or not
advancing for that long while watched (clocks of hosts may differ). A holder
on another host whose heartbeat is fresh is watched until it advances (a live
holder) or stops (a stale one): a start there waits up to `STALE_AFTER_S`.
Of several jobs that find one stale lock, the one that creates
`<lock>.<token>.break` removes it; all then race to create it afresh.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import jax
from etils import epath

from alexnet_jax import errors
from alexnet_jax.files import lock_file, paths
from alexnet_jax.files.lock_file import Holder
from alexnet_jax.parallel import processes

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # ten missed heartbeats
# A job waiting for another's data preparation gives up after this (ImageNet's takes hours).
PREPARE_WAIT_S = processes.PREPARE_TIMEOUT_S
RUN_LOCK = ".alexnet_jax_run.lock"  # in the workdir
PREPARE_LOCK = ".alexnet_jax_prepare.lock"  # in the data_dir: preparing the tfds dataset
_POLL_S = 2.0


class FolderInUseError(errors.RunError):
    """Another live job holds the lock (one line naming it and the lock file)."""


class FolderLock:
    """The lock file `path`, for `what` (said in messages: "the workdir", ...).

    `acquire()` takes it, waiting up to `wait_s` for a live holder to
    release it (0: refuse at once), taking over a stale one; `release()` gives
    it back. Also a context manager (acquire ... release).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        what: str,
        *,
        wait_s: float = 0.0,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        self.path = epath.Path(path)
        self.what, self.wait_s = what, wait_s
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self._token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _record(self, since: str) -> dict:
        pid = os.getpid()
        return {
            "host": socket.gethostname(),
            "pid": pid,
            "since": since,
            "heartbeat": time.time(),
            "token": self._token,
            "started": lock_file.process_start(pid),
            "what": self.what,
        }

    def acquire(self) -> None:
        """Takes the lock, or raises FolderInUseError naming its live holder
        once `wait_s` has passed (after watching a holder on another host
        until its heartbeat advances or stops, up to `stale_after_s`)."""
        wait_s = self.wait_s
        self._token = uuid.uuid4().hex
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        deadline = time.monotonic() + wait_s
        poll = min(_POLL_S, self.heartbeat_s)
        watched: dict[str, tuple[float, float]] = {}  # token -> (heartbeat, when first seen at it)
        said, unreadable_since = False, None
        while True:
            if lock_file.create_exclusive(self.path, json.dumps(self._record(since))):
                break
            holder = lock_file.read(self.path)
            if holder is None:  # released meanwhile, or being written (or a wreck: then stale in time)
                unreadable_since = unreadable_since or time.monotonic()
                if time.monotonic() - unreadable_since > self.stale_after_s:
                    logging.warning("Removing the unreadable lock %s", self.path)
                    self.path.unlink(missing_ok=True)
                time.sleep(0.05)
                continue
            unreadable_since = None
            first = watched.setdefault(holder.token, (holder.heartbeat, time.monotonic()))
            stale = self._stale_because(holder, first)
            if stale:
                self._take_over(holder, stale)
                continue
            live = holder.host == socket.gethostname() or holder.heartbeat != first[0]
            if live and time.monotonic() >= deadline:
                raise FolderInUseError(self._refusal(holder, wait_s))
            if not said:
                logging.warning(
                    "Another job holds the lock %s (%s) for %s: waiting up to %.0f s for it%s",
                    self.path,
                    holder.describe(),
                    self.what,
                    max(wait_s, 0 if live else self.stale_after_s),
                    "" if live else " (watching its heartbeat: a live job's advances, a killed job's stops)",
                )
                said = True
            time.sleep(poll)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, args=(since,), name=f"heartbeat {self.path}", daemon=True)
        self._thread.start()

    def _refusal(self, holder: Holder, wait_s: float) -> str:
        where = f"{holder.describe()}; lock file {self.path}"
        if wait_s > 0:
            return (
                f"waited {wait_s:.0f} s in vain for another job {self.what} ({where}): rerun once it has finished; "
                f"if it is gone, delete the lock file"
            )
        another = ", or use another --workdir" if self.path.name == RUN_LOCK else ""
        return (
            f"{self.what} is in use by another job ({where}): wait for it to finish{another}; "
            f"if it is gone, delete the lock file"
        )

    def _stale_because(self, holder: Holder, first: tuple[float, float]) -> str:
        """Why `holder`'s lock is stale ("" while it may be live)."""
        if holder.host == socket.gethostname():
            return "" if lock_file.alive_here(holder) else f"its process {holder.pid} is gone"
        if time.time() - holder.heartbeat > self.stale_after_s:
            return f"no heartbeat for {time.time() - holder.heartbeat:.0f} s"
        if holder.heartbeat == first[0] and time.monotonic() - first[1] > self.stale_after_s:
            return f"its heartbeat did not advance in {self.stale_after_s:.0f} s"
        return ""

    def _take_over(self, holder: Holder, why: str) -> None:
        """Removes `holder`'s stale lock, one job at a time: the one that
        creates `<lock>.<token>.break` (itself stale by the same rules)."""
        breaker = self.path.with_name(f"{self.path.name}.{holder.token}.break")
        if not lock_file.create_exclusive(breaker, json.dumps(self._record(""))):
            other = lock_file.read(breaker)
            if other is not None and self._stale_because(other, (other.heartbeat, time.monotonic())):
                breaker.unlink(missing_ok=True)
            time.sleep(0.05)
            return
        try:
            current = lock_file.read(self.path)
            if current is not None and (current.token, current.heartbeat) == (holder.token, holder.heartbeat):
                logging.warning("Taking over the stale lock %s of %s (%s)", self.path, holder.describe(), why)
                self.path.unlink(missing_ok=True)
        finally:
            breaker.unlink(missing_ok=True)

    def _holds(self) -> bool:
        holder = lock_file.read(self.path)
        return holder is not None and holder.token == self._token

    def _beat(self, since: str) -> None:
        """The heartbeat: rewrites the lock's time until released."""
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self._holds():
                    logging.error("The lock %s is no longer this job's: another job took it over", self.path)
                    return
                paths.write_json(self.path, self._record(since))
            except Exception as error:  # a passing error of a remote file system: try again next time
                logging.warning("Could not renew the lock %s: %s", self.path, error)

    def release(self) -> None:
        """Gives the lock back (no-op if not held)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._token is not None and self._holds():
            self.path.unlink(missing_ok=True)
        self._token = None


def preparing(path: str | os.PathLike, what: str) -> FolderLock:
    """The lock of one preparation in a data_dir (`what`: "dataset mnist", ...):
    a job that finds it held waits up to PREPARE_WAIT_S, then finds it prepared."""
    return FolderLock(path, f"preparing {what}", wait_s=PREPARE_WAIT_S)


class RunLock:
    """The workdir's lock of a run, held by process 0 (the other processes
    belong to the same run and hear of a refusal from it): `acquire(workdir)`
    before the run's first write, released by leaving the `with` block."""

    def __init__(self) -> None:
        self._lock: FolderLock | None = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def acquire(self, workdir: epath.Path) -> None:
        def take() -> None:
            lock = FolderLock(workdir / RUN_LOCK, f"--workdir {workdir}")
            lock.acquire()
            self._lock = lock

        processes.prepare_once(
            "the workdir's lock", take, lambda: None, is_preparer=jax.process_index() == 0, error_type=FolderInUseError
        )
