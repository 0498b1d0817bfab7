"""Where a run's files live: a local path, or any URI `etils.epath` reads
and writes (gs://, s3://, ...; through tf.io.gfile when TensorFlow is
installed). The workdir (config.json, checkpoints, event files) and the
data_dir are read and written through `epath.Path`, never `os` and `open`,
so the same code serves a local disk and a bucket.
"""

from __future__ import annotations

import io
import json
import os
import socket
from typing import Any

import numpy as np
from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a URI (gs://bucket/..., ...) rather than a local path."""
    return "://" in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an `epath.Path`: a local one with `~` expanded and made
    absolute (orbax takes absolute local paths), a URI unchanged (an
    absolute local path would turn gs://b/x into ./gs:/b/x)."""
    path = epath.Path(path)
    return path if is_remote(path) else path.expanduser().resolve()


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """`np.savez` to `path`, local or remote: built in memory and written in
    one piece (np.savez seeks and tells, which object stores' writers lack)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    epath.Path(path).write_bytes(buffer.getvalue())


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, local or remote, read in one piece."""
    with np.load(io.BytesIO(epath.Path(path).read_bytes())) as saved:
        return {name: saved[name] for name in saved.files}


def write_json(path: str | os.PathLike, record: Any) -> None:
    """`record` as indented JSON, atomically: written beside `path` under a
    name of this host and process, then renamed over it, so a reader sees
    the old file or the new one, never a part (on a bucket the rename is a
    copy, but the file is still whole)."""
    target = epath.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    with tmp.open("w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    tmp.replace(target)
