"""A sweep's runs and how each stands: the manifest launch.sweep writes
(`<workdir>/sweep.json`), the command each variant last finished with
(`sweep_done.json`), and `run_status`, the one source of launch.sweep's
skipping, launch.report's status column and an ensemble's `--sweep` members.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from alexnet_jax import errors
from alexnet_jax.files import paths
from alexnet_jax.runs import config_json

Variant = dict[str, Any]

MANIFEST = "sweep.json"


DONE = "sweep_done.json"


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    overrides: Variant
    workdir: str
    args: list[str]  # everything after the python executable

    @property
    def command(self) -> list[str]:
        return [sys.executable, *self.args]


FINISHED = "finished"


NOT_FINISHED = "not finished (killed, or still running)"


def run_status(run: Run) -> str:
    """How a variant stands against its command in the manifest, from its
    `sweep_done.json` (the exact command it last completed) and config.json's
    `last_exit` (how the run last ended): the one source of launch.sweep's
    skipping, launch.report's status column and `--sweep`'s members.

    `FINISHED` (the only status is_finished accepts), "failed at step N
    (error)", "stopped at step N (a signal; resumable)", "interrupted at
    step N (resumable)", "not started",
    "finished another command (...)", or `NOT_FINISHED`.
    """
    if not os.path.isdir(run.workdir):
        return "not started"
    try:
        record = config_json.load(run.workdir) or {}
    except ValueError as error:
        return f"not finished: {error}"
    last_exit = record.get("last_exit") or {}
    if last_exit.get("status") == "failed":
        return f"failed at step {last_exit['step']} ({last_exit['error']})"
    if last_exit.get("status") == "stopped":  # preempted, saved: rerunning the sweep resumes it
        return f"stopped at step {last_exit['step']} (a signal; resumable)"
    if last_exit.get("status") == "interrupted":  # a second Ctrl-C or a kill after the signal
        return f"interrupted at step {last_exit['step']} (resumable)"
    restarts = record.get("restarts") or []
    if last_exit and restarts and restarts[-1].get("time", "") > last_exit.get("time", ""):
        return NOT_FINISHED  # e.g. being extended with more steps, or killed while it was
    done = finished_args(run)
    if done is None:
        if last_exit.get("status") == FINISHED:
            return f"finished at step {last_exit['step']} outside launch.sweep (no {DONE}): rerun the sweep"
        return NOT_FINISHED
    if done != run.args:
        (old_rest, old), (new_rest, new) = split_overrides(done), split_overrides(run.args)
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        what = ", ".join(f"--config.{k}" for k in changed) if changed and old_rest == new_rest else "its arguments"
        return f"finished another command ({what} differ from the sweep's): rerun the sweep"
    return FINISHED


def is_finished(run: Run) -> bool:
    return run_status(run) == FINISHED


def check_local(directory: str, flag: str) -> None:
    """One-line ValueError naming `flag` for a URI (gs://...): a sweep runs
    local processes and keeps their logs, markers and reports in local files."""
    if paths.is_remote(directory):
        raise errors.ConfigError(
            f"{flag} {directory} is a URI, but sweeps and their reports use local files (logs, sweep.json): "
            "use a local directory"
        )


def manifest_runs(workdir: str, manifest: Mapping[str, Any]) -> list[Run]:
    """The runs a sweep's manifest names, with the commands it last planned."""
    return [
        Run(entry["name"], entry["overrides"], os.path.join(workdir, entry["name"]), shlex.split(entry["command"])[1:])
        for entry in manifest["runs"]
    ]


def finished_workdirs(workdir: str, skipped: Callable[[str, str], None] | None = None) -> list[str]:
    """The workdirs of the sweep's variants that finished with the command
    the manifest names (in the sweep's order): an ensemble's members.
    `skipped(workdir, status)` is called for every other variant."""
    check_local(workdir, "--sweep")
    path = os.path.join(workdir, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except OSError:
        raise errors.ConfigError(f"{path} not found: --sweep takes a launch.sweep --workdir") from None
    finished = []
    for run in manifest_runs(workdir, manifest):
        status = run_status(run)
        if status == FINISHED:
            finished.append(run.workdir)
        elif skipped is not None:
            skipped(run.workdir, status)
    if not finished:
        raise errors.RunError(f"no variant of the sweep in {workdir} has finished: run or resume it first")
    return finished


def finished_args(run: Run) -> list[str] | None:
    """The command a variant last finished with, or None."""
    try:
        with open(os.path.join(run.workdir, DONE)) as f:
            return json.load(f)["args"]
    except (OSError, ValueError, KeyError):
        return None


def split_overrides(args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(the other arguments, {field: value} of the --config.FIELD=VALUE ones)."""
    overrides = dict(arg.removeprefix("--config.").split("=", 1) for arg in args if arg.startswith("--config."))
    return [arg for arg in args if not arg.startswith("--config.")], overrides
