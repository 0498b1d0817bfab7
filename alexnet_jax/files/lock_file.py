"""A lock's file (alexnet_jax.files.folder_lock): the JSON record naming its
holder, read back tolerantly, and its atomic creation.

The file is created atomically on a local or network file system (a hard
link of a complete file, which fails if the name exists, also over NFS;
O_EXCL where hard links are missing). Through a URI (gs://...) epath has no
create-if-absent: the lock is written when absent and read back after
`_REMOTE_SETTLE_S`, which tells two starts apart unless they write within
that time of each other (best effort).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import uuid

from etils import epath

from alexnet_jax.files import paths

_REMOTE_SETTLE_S = 2.0


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its file says."""

    host: str
    pid: int
    since: str
    heartbeat: float  # time.time() of the holder's last heartbeat
    token: str  # unique per acquisition
    started: str | None = None  # the process's boot and start time, where the OS tells it

    def describe(self) -> str:
        age = max(0.0, time.time() - self.heartbeat)
        return f"host {self.host}, pid {self.pid}, since {self.since}, heartbeat {age:.0f} s ago"


def process_start(pid: int) -> str | None:
    """Boot id and start time of process `pid` (Linux /proc), None elsewhere or if it is gone."""
    try:
        boot = epath.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = epath.Path(f"/proc/{pid}/stat").read_text()
        return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22, after the command's parentheses
    except (OSError, IndexError):
        return None


def alive_here(holder: Holder) -> bool:
    """Whether the holder's process runs (called on the holder's host): its
    pid, and its start time where known, so a reused pid does not count."""
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return holder.started is None or process_start(holder.pid) in (None, holder.started)


def read(path: epath.Path) -> Holder | None:
    """The lock's holder; None when the file is gone or not (yet) a whole record."""
    try:
        record = json.loads(path.read_text())
        return Holder(**{f.name: record[f.name] for f in dataclasses.fields(Holder) if f.name in record})
    except Exception:  # OSError, a partial record, or tf.errors.* of a remote file system
        return None


def create_exclusive(path: epath.Path, text: str) -> bool:
    """Creates `path` holding `text` unless it exists; whether this call created it."""
    if paths.is_remote(path):
        if path.exists():
            return False
        path.write_text(text)
        time.sleep(_REMOTE_SETTLE_S)  # a concurrent writer's object lands, or has landed
        return read(path) is not None and path.read_text() == text
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    try:
        os.link(tmp, path)  # atomic, whole file, fails if `path` exists (NFS too)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    finally:
        tmp.unlink(missing_ok=True)
