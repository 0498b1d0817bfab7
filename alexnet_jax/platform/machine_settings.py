"""The machine settings an entry point applies at its start, before JAX
starts: the XLA:CPU flag (xla_cpu_flags) and the malloc settings
(host_malloc), each where it was measured to help, and an exit without the
interpreter's final garbage collection (process_exit). Importing alexnet_jax,
or any of its modules, applies nothing: a library import leaves os.environ,
malloc and XLA's flags as they were. Each entry point calls

    if __name__ == "__main__":
        machine_settings.apply_machine_settings(huge_pages=True)  # first: before JAX or TensorFlow start
        app.run(main)

which logs one INFO line saying what it applied (or that nothing was, and
why). A bad ALEXNET_JAX_MALLOC value is one `error:` line and exit status 2
(a misspelt setting, as for flags), before any work.
"""

from __future__ import annotations

import os
import sys

from absl import app, logging

from alexnet_jax.platform import host_malloc, process_exit, xla_cpu_flags

USAGE_ERROR = 2  # the README's exit status for a misspelt flag or field


def apply_machine_settings(*, huge_pages: bool = False, absl_app: bool = True, runs_jax: bool = True) -> str:
    """Applies this process's machine settings; the line it logs.

    huge_pages: restart the command with glibc's huge pages where they help
      (host_malloc.restart_with_huge_pages: training and the benches that
      time its steps); the process is replaced, and the new one comes here again.
    absl_app: the line goes to absl's log once app.run has set it up; otherwise to stderr.
    runs_jax: False for a launcher whose commands apply their own (launch.sweep):
      it only checks ALEXNET_JAX_MALLOC, so a typo stops it before any variant starts.
    """
    try:
        host_malloc.mode(os.environ)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(USAGE_ERROR)
    if runs_jax:
        if huge_pages:
            host_malloc.restart_with_huge_pages()  # first: the XLA flag below would pass to the restarted process
        malloc = host_malloc.describe(os.environ, host_malloc.apply(), restarts=huge_pages)
        flags_before = os.environ.get("XLA_FLAGS", "")
        xla = xla_cpu_flags.describe(flags_before, xla_cpu_flags.apply())
        process_exit.skip_final_collection()
        line = f"machine settings: XLA:CPU with {xla}; malloc: {malloc}; exit: no final garbage collection"
    else:
        line = "machine settings: none in this process (it runs no JAX); each command it runs applies its own"
    if absl_app:  # absl logs INFO only once app.run has parsed its flags: just before main runs
        app.call_after_init(lambda: logging.info("%s", line))
    else:
        print(line, file=sys.stderr, flush=True)
    return line
