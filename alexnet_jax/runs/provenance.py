"""Where the code of a run came from: the package version and the git commit
of the checkout, both recorded in config.json at the first start."""

from __future__ import annotations

import os
import subprocess

import alexnet_jax


def version() -> str:
    """The package's own version (alexnet_jax.__version__): the package is run
    from a checkout, never installed, so installed metadata would say nothing."""
    return alexnet_jax.__version__


def git_commit() -> str | None:
    """The checkout's commit (with "-dirty" for uncommitted changes), if it is one."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")
