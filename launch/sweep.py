"""Runs a sweep: one training run per variant of a config, each in its own workdir.

    python -m launch.sweep --config configs/paper.py --sweep configs/sweeps/ablations.py \\
        --workdir runs/ablations [--config.num_train_steps=N ...] [--dry-run | --index I]

A sweep file defines `get_sweep()`, a list of variants, each a dict of config
fields to values (`{"model.use_lrn": False}`); the first is the baseline the
report compares against. `grid` and `product` below build the lists. Each
variant runs `python -m alexnet_jax.main` in `<workdir>/<name>`, its name made
of its settings (`use_lrn=False,pool_window=2`). `--config.*` arguments pass
through to every variant.

Locally the variants run one after the other, each one's whole output in
`<workdir>/<name>/sweep.log` and its own lines (progress, result, error) on
the console. A variant counts as finished when its `sweep_done.json` records
the exact command it ran to completion and its config.json's `last_exit`
does not say it failed or stopped since (run_status), so rerunning the sweep
skips finished variants, resumes an interrupted one from its checkpoint,
extends a finished one whose command changed only in what a restart may
change (e.g. more steps), and starts afresh any other whose command changed
(its old workdir moved aside to `<name>.replaced-<time>`).
`--dry-run` prints the commands, one per line, for any scheduler; `--index I`
runs only variant I (a SLURM array task: see launch/sweep_array.sbatch).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import alexnet_jax
from alexnet_jax import errors
from alexnet_jax.runs import field_rules, overrides
from alexnet_jax.runs.sweep_status import (
    DONE,
    MANIFEST,
    Run,
    Variant,
    check_local,
    finished_args,
    is_finished,
    split_overrides,
)

LOG = "sweep.log"


def grid(axes: Mapping[str, Sequence[Any]]) -> list[Variant]:
    """Every combination of the axes' values, the first axis varying slowest."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def product(*variant_lists: Sequence[Variant]) -> list[Variant]:
    """Every combination of one variant from each list, merged (e.g. variants x seeds)."""
    return [{k: v for variant in combo for k, v in variant.items()} for combo in itertools.product(*variant_lists)]


class ArgumentParser(argparse.ArgumentParser):
    """argparse, its usage errors one line `error: ...` with exit status 2 (docs/troubleshooting.md's table),
    a misspelt flag named as the entry points name it. `--config.FIELD=VALUE` is left to the caller."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        known = [option.lstrip("-") for action in self._actions for option in action.option_strings]
        for arg in args:
            name = arg.split("=", 1)[0].lstrip("-") if arg.startswith("--") else ""
            if name and not name.startswith("config.") and not any(k.startswith(name) for k in known):
                raise errors.UsageError(overrides.unknown_flag(name, known))
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        raise errors.UsageError(f"{message} (--help lists the flags)")


def _load_module(path: str, what: str):
    missing = overrides.missing_config_file([f"--{what}={path}"])
    if missing:
        raise errors.ConfigError(missing)
    spec = importlib.util.spec_from_file_location(f"_sweep_{what}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_variants(sweep_path: str, config_path: str) -> list[Variant]:
    """The sweep file's variants, every field checked against the config file."""
    variants = _load_module(sweep_path, "sweep").get_sweep()
    config = _load_module(config_path, "config").get_config()
    if not variants or not all(isinstance(v, dict) for v in variants):
        raise errors.ConfigError(f"{sweep_path}: get_sweep() must return a non-empty list of dicts")
    for i, variant in enumerate(variants):
        for field in variant:
            unknown = overrides.unknown_field(field, config.to_dict())
            if unknown:
                raise errors.UsageError(
                    f"{sweep_path}: variant {i} ({variant_name(variant)}) sets {field!r}, "
                    f"which is not a field of {config_path}: {unknown}"
                )
    return variants


def _flag_value(value: Any) -> str:
    # config_flags parses tuples and lists from their Python literal.
    return repr(value) if isinstance(value, tuple | list) else str(value)


def variant_name(variant: Variant) -> str:
    """`use_lrn=False,pool_window=2` (last part of each field); `base` when empty."""
    if not variant:
        return "base"
    parts = [f"{field.rsplit('.', 1)[-1]}={_flag_value(value)}" for field, value in variant.items()]
    return re.sub(r"[^A-Za-z0-9._,=+-]", "", ",".join(parts))


def _override_field(arg: str) -> str:
    return arg.split("=", 1)[0].removeprefix("--config.")


def plan(
    config_path: str,
    sweep_path: str,
    workdir: str,
    extra: Sequence[str],
    entry_point: Sequence[str] = ("-m", "alexnet_jax.main"),
) -> list[Run]:
    """The runs of a sweep, in the sweep file's order; each runs `python <entry_point> --config ...`."""
    variants = load_variants(sweep_path, config_path)
    for arg in extra:
        if not arg.startswith("--config.") or "=" not in arg:
            raise errors.UsageError(f"unexpected argument {arg!r}: only --config.FIELD=VALUE passes to the runs")
        field = _override_field(arg)
        unknown = overrides.unknown_field(field)
        if unknown:
            raise errors.UsageError(unknown)  # as alexnet_jax.main says it
        if any(field in v for v in variants):
            raise errors.ConfigError(f"--config.{field} is swept by {sweep_path}; drop it from the command line")
    runs, seen = [], {}
    for variant in variants:
        name = variant_name(variant)
        if name in seen:
            raise errors.ConfigError(f"{sweep_path}: variants {seen[name]} and {variant} are both named {name!r}")
        seen[name] = variant
        run_dir = os.path.join(workdir, name)
        variant_args = [f"--config.{k}={_flag_value(v)}" for k, v in variant.items()]
        args = [*entry_point, f"--config={config_path}", f"--workdir={run_dir}", *variant_args, *extra]
        runs.append(Run(name, variant, run_dir, args))
    return runs


def write_manifest(workdir: str, config_path: str, sweep_path: str, extra: Sequence[str], runs: list[Run]) -> None:
    """`<workdir>/sweep.json`: what launch.report needs to read the sweep back."""
    os.makedirs(workdir, exist_ok=True)
    manifest = {
        "config": config_path,
        "sweep": sweep_path,
        "extra_overrides": list(extra),
        "baseline": runs[0].name,
        "runs": [{"name": r.name, "overrides": r.overrides, "command": shlex.join(r.command)} for r in runs],
    }
    # Written to a temporary file and renamed, so array tasks never read a partial file.
    tmp = os.path.join(workdir, f".{MANIFEST}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2, default=str)
    os.replace(tmp, os.path.join(workdir, MANIFEST))


# An absl log line: level, date, time, thread, source file:line], message. TensorFlow's and XLA's C++ logs
# share the form (`I0000 00:00:... cpu_feature_guard.cc:227]`).
_LOG_LINE = re.compile(r"[IWEF]\d{4} [\d:.]+ +\d+ ([\w.-]+):\d+\] (.*)")
_OWN_SOURCES = frozenset(path.name for path in pathlib.Path(alexnet_jax.__file__).parent.rglob("*.py"))


def is_own_line(line: str) -> bool:
    """Whether a line of a variant's output is the run's own, echoed by the
    sweep: the project's log lines, the scalars clu logs (`[step] name=value`),
    the result line and `error:` lines. The rest (TensorFlow's, JAX's and
    absl's start-up chatter, progress bars, the hparams dump) goes to the
    variant's log only."""
    match = _LOG_LINE.match(line)
    if match:
        source, message = match.groups()
        return source in _OWN_SOURCES or (source == "logging_writer.py" and bool(re.match(r"\[\d+\] \w+=", message)))
    return line.startswith("error: ") or " top-1 accuracy: " in line


def execute(run: Run) -> int:
    """Runs one variant, its whole output to `<run>/sweep.log` and its own
    lines (is_own_line) to the console, then its last line if it failed
    without one (a traceback's end); returns the exit code."""
    os.makedirs(run.workdir, exist_ok=True)
    start = time.monotonic()
    with open(os.path.join(run.workdir, LOG), "a") as log:
        log.write(f"$ {shlex.join(run.command)}\n")
        process = subprocess.Popen(run.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        last, echoed = "", False
        for line in process.stdout:
            log.write(line)
            if line.strip():
                last, echoed = line, is_own_line(line)
                if echoed:
                    sys.stdout.write(f"[{run.name}] {line}")
        returncode = process.wait()
    if returncode and last and not echoed:
        sys.stdout.write(f"[{run.name}] {last}")
    sys.stdout.flush()
    if returncode == 0:
        done = {"args": run.args, "seconds": round(time.monotonic() - start, 1), "finished": time.ctime()}
        with open(os.path.join(run.workdir, DONE), "w") as f:
            json.dump(done, f, indent=2)
    return returncode


def only_restart_changes(old_args: Sequence[str], new_args: Sequence[str]) -> bool:
    """Whether a finished variant's new command changes only fields a
    restart may change (field_rules.MAY_CHANGE: more steps, logging, ...),
    so resuming it extends the same run."""
    old_rest, old_overrides = split_overrides(old_args)
    new_rest, new_overrides = split_overrides(new_args)
    changed = {k for k in old_overrides.keys() | new_overrides.keys() if old_overrides.get(k) != new_overrides.get(k)}
    return old_rest == new_rest and changed <= field_rules.MAY_CHANGE.keys()


def _move_aside(run: Run) -> str:
    aside = f"{run.workdir}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(run.workdir, aside)
    return aside


def run_all(runs: list[Run]) -> int:
    """Runs the unfinished variants one after the other; 1 if any failed.

    A variant that finished under another command resumes when the new one
    changes only what a restart may change (e.g. more steps); otherwise its
    workdir is moved aside and it starts afresh: old weights never continue
    under a new config.
    """
    failed = []
    print(f"each variant's own lines are echoed here; its whole output is in <variant>/{LOG}", flush=True)
    for i, run in enumerate(runs):
        if is_finished(run):
            print(f"[{i + 1}/{len(runs)}] {run.name}: finished before, skipped", flush=True)
            continue
        previous = finished_args(run)
        if previous is not None and not only_restart_changes(previous, run.args):
            aside = _move_aside(run)
            print(f"[{i + 1}/{len(runs)}] {run.name}: its command changed since it finished; moved to {aside}")
        print(f"[{i + 1}/{len(runs)}] {run.name}: {shlex.join(run.command)}", flush=True)
        returncode = execute(run)
        if returncode:
            failed.append(f"{run.name} (exit {returncode}, see {os.path.join(run.workdir, LOG)})")
    if failed:
        print(f"{len(failed)} of {len(runs)} variants failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all {len(runs)} variants finished", flush=True)
    return 0


@errors.one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Other --config.FIELD=VALUE pass through.")
    parser.add_argument("--config", required=True, help="the base config file, e.g. configs/paper.py")
    parser.add_argument("--sweep", required=True, help="a sweep file, e.g. configs/sweeps/ablations.py")
    parser.add_argument("--workdir", required=True, help="one subdirectory per variant is made here")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the commands, one per line, and exit")
    mode.add_argument("--index", type=int, help="run only this variant (0-based), e.g. $SLURM_ARRAY_TASK_ID")
    args, extra = parser.parse_known_args(argv)
    check_local(args.workdir, "--workdir")  # before anything is written
    runs = plan(args.config, args.sweep, args.workdir, extra)
    if args.dry_run:
        print("\n".join(shlex.join(run.command) for run in runs))
        return 0
    write_manifest(args.workdir, args.config, args.sweep, extra, runs)
    if args.index is not None:
        if not 0 <= args.index < len(runs):
            raise SystemExit(
                f"error: --index={args.index} but {args.sweep} has {len(runs)} variants (0..{len(runs) - 1})"
            )
        return run_all(runs[args.index : args.index + 1])
    return run_all(runs)


if __name__ == "__main__":
    from alexnet_jax.platform import machine_settings

    machine_settings.apply_machine_settings(absl_app=False, runs_jax=False)  # checks ALEXNET_JAX_MALLOC
    sys.exit(main())
