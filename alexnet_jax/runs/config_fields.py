"""A config's dotted fields ("model.width"): flattened, read, set from JSON
values, compared, and the one-line refusal naming those that may not change."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections


def flat_fields(config: ml_collections.ConfigDict | Mapping) -> dict[str, Any]:
    """{"model.width": 0.25, ...}: every leaf, JSON-normalised (tuples as lists)."""
    tree = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    tree = json.loads(json.dumps(tree))

    def walk(node: Mapping, prefix: str) -> Iterable[tuple[str, Any]]:
        for key, value in node.items():
            if isinstance(value, Mapping):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(walk(tree, ""))


def field_value(config: ml_collections.ConfigDict, dotted: str) -> Any:
    """config["model"]["width"] for "model.width" (a group for "model")."""
    for part in dotted.split("."):
        config = config[part]
    return config


def set_field(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
    """Sets a dotted field from a JSON value (lists back to tuples where the field is one)."""
    node, _, leaf = field.rpartition(".")
    target = field_value(config, node) if node else config
    target[leaf] = tuple(value) if isinstance(target[leaf], tuple) else value


def differences(saved: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (saved, new)} for the fields of `new` whose values differ."""
    return {k: (saved[k], v) for k, v in new.items() if k in saved and saved[k] != v}


def describe(value: Any) -> str:
    return repr(tuple(value)) if isinstance(value, list) else repr(value)


def refusal(record_path: str | os.PathLike, fields: Mapping[str, tuple[Any, Any]]) -> str:
    """One line naming every field the new config may not change (`record_path`: the config.json)."""
    parts = [
        f"config.{field}={describe(new)} but this run was trained with {describe(old)}"
        for field, (old, new) in fields.items()
    ]
    return f"{'; '.join(parts)} ({record_path}); use a new --workdir, or pass the run's value"
