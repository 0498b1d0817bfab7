"""`--config.FIELD=VALUE` names checked before the flag parser sees them.

ml_collections' parser answers a misspelt field with a 50-line traceback;
the entry points (main, evaluate, predict, retrieval, launch.sweep) ask here
first and print one line naming the field and the closest valid names:
`error: config.modle does not exist; did you mean config.model?`.
Every field lives in configs/default.py, so its tree is the reference.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Mapping, Sequence

from absl import app


def _field_tree() -> Mapping:
    from configs import default

    return default.get_config().to_dict()


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
                else "configs/default.py lists every field"
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


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (app.run's flags_parser), after the override names
    are checked: an unknown one exits with one line, status 2 (a usage error)."""
    message = check_overrides(argv[1:])
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    return app.parse_flags_with_usage(argv)
