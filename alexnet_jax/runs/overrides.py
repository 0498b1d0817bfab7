"""The command line of the absl entry points, checked before it is parsed.

ml_collections' parser answers a misspelt field or a missing config file
with a 40-line traceback, absl a misspelt flag with two lines and exit
status 1; the entry points (main, evaluate, predict, retrieval; launch.sweep
checks its own) ask here first and print one line, exit status 2 for a
command line that does not parse (docs/troubleshooting.md's table):
`error: config.modle does not exist; did you mean config.model?`.
Every field lives in runs.defaults, so its tree is the reference.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence

from absl import flags

from alexnet_jax import errors
from alexnet_jax.runs import defaults


def _field_tree() -> Mapping:
    return defaults.get_config().to_dict()


def unknown_field(field: str, tree: Mapping | None = None) -> str | None:
    """None if `field` ("model.use_lrn") is a config field (or a group of
    them), else the one-line message naming its first unknown part."""
    node = _field_tree() if tree is None else tree
    parts = field.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, Mapping):  # past a leaf: "batch_size.x"
            parent = ".".join(parts[:depth])
            return f"config.{field} does not exist: config.{parent} is a value, not a group of fields"
        if part not in node:
            prefix = "".join(f"{p}." for p in parts[:depth])
            close = difflib.get_close_matches(part, list(node), n=3, cutoff=0.5)
            hint = (
                "did you mean " + " or ".join(f"config.{prefix}{name}" for name in close) + "?"
                if close
                else "alexnet_jax/runs/defaults.py lists every field"
            )
            return f"config.{prefix}{part} does not exist; {hint}"
        node = node[part]
    return None


def override_names(argv: Iterable[str]) -> list[str]:
    """The FIELDs of `--config.FIELD=VALUE`, `--config.FIELD VALUE` and the
    boolean `--[no]config.FIELD` arguments."""
    names = []
    for arg in argv:
        if arg == "--":  # absl: what follows is not a flag
            break
        name = arg.lstrip("-").split("=", 1)[0] if arg.startswith("-") else ""
        for prefix in ("config.", "noconfig."):
            if name.startswith(prefix):
                names.append(name.removeprefix(prefix))
    return names


def check_overrides(argv: Sequence[str]) -> str | None:
    """The first unknown override's message, or None."""
    tree = _field_tree()
    for name in override_names(argv):
        message = unknown_field(name, tree)
        if message:
            return message
    return None


def config_files(argv: Iterable[str]) -> list[str]:
    """The paths given to `--config` (without config_flags' `:ARGS` suffix)."""
    argv, found = list(argv), []
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == "config":
            if not has_value:
                value = argv[i + 1] if i + 1 < len(argv) else ""
            found.append(value.split(":", 1)[0])
    return found


def missing_config_file(argv: Iterable[str]) -> str | None:
    """The message for a `--config` file that does not exist, naming the
    closest files beside it, or None."""
    for path in config_files(argv):
        if os.path.isfile(path):
            continue
        folder = os.path.dirname(path) or "."
        try:
            near = [name for name in os.listdir(folder) if name.endswith(".py") and not name.startswith("_")]
        except OSError:
            near = []
        names = difflib.get_close_matches(os.path.basename(path), near)
        close = [os.path.join(os.path.dirname(path), name) for name in names]
        hint = "did you mean " + " or ".join(close) + "?" if close else "give a config file such as configs/digits.py"
        return f"--config {path}: no such file; {hint}"
    return None


def refuse_unknown_overrides(argv: Sequence[str]) -> None:
    """Exits with one line (status 2) naming the first misspelt `--config.*`
    field of `argv`. Also for config_flags' definition with a default config
    file, which applies the overrides of sys.argv at once (reading.define_flags)."""
    message = check_overrides(argv)
    if message:
        errors.exit_with(errors.UsageError(message))


def unknown_flag(name: str, known: Iterable[str]) -> str:
    """`--work_dir is not a flag; did you mean --workdir?` (`name` and `known` without dashes)."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    hint = f"did you mean --{close[0]}?" if close else "--help lists them"
    return f"--{name} is not a flag; {hint}"


def _flag_message(error: flags.Error) -> str:
    if isinstance(error, flags.UnrecognizedFlagError):
        return unknown_flag(error.flagname, flags.FLAGS)
    # absl's required-flag validator: "flag --workdir=None: Flag --workdir must have a value other than None."
    missing = re.fullmatch(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.", str(error))
    if missing:
        return f"--{missing.group(1)} is required (--helpshort lists the flags)"
    return errors.one_line(error)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (app.run's flags_parser) with one-line errors: a
    misspelt field or flag, or a value that does not parse, exits with
    status 2; a missing config file with status 1, before anything runs."""
    refuse_unknown_overrides(argv[1:])
    missing = missing_config_file(argv[1:])
    if missing:
        errors.exit_with(errors.ConfigError(missing))
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        errors.exit_with(errors.UsageError(_flag_message(error)))
