"""The project's own error types: what the entry points print as one line.

Each entry point (main, evaluate, predict, retrieval, launch.sweep,
launch.report) ends on an `Error` with one line, `error: <message>`, and
its `exit_status` (docs/troubleshooting.md, "What each error means"). Any other
exception, a bug here or in JAX, flax, orbax or TensorFlow, keeps its
traceback. The types subclass the built-in ones callers already catch
(ValueError, RuntimeError, OSError, FloatingPointError).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

_Main = TypeVar("_Main", bound=Callable)


class Error(Exception):
    """Base of the project's errors: one `error:` line, exit status 1."""

    exit_status = 1


class ConfigError(Error, ValueError):
    """Bad input: a config field's value, a flag, a file or path, an environment variable."""


class UsageError(ConfigError):
    """A command line that does not parse: a misspelt flag or field, a value of the wrong type (exit status 2)."""

    exit_status = 2


class RunError(Error, ValueError):
    """What a workdir or sweep holds refuses the request: another run's config,
    no readable checkpoint, nothing finished."""


class Diverged(Error, FloatingPointError):
    """A non-finite loss or parameters: training stops; the last good checkpoint is kept."""


def one_line(error: BaseException) -> str:
    """The error's message on one line (a multi-line one joined with "; ")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def exit_with(error: Error) -> NoReturn:
    """Ends the command with `error:` and the message on stderr, and the error's exit status."""
    message = f"error: {one_line(error)}"
    if error.exit_status == 1:
        # Python prints a string exit code on stderr and exits 1; the message stays
        # on the SystemExit for callers that catch it (tests, launch.sweep's functions).
        raise SystemExit(message)
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(error.exit_status)


def one_line_errors(main: _Main) -> _Main:
    """An entry point's `main`, ended by the project's errors with one line
    (`exit_with`); any other exception keeps its traceback."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Error as error:
            exit_with(error)

    return wrapped  # type: ignore[return-value]
