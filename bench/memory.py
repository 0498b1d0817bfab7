"""Where a training run's host memory goes: peak resident memory (RSS) after
each stage of a real `python -m alexnet_jax.main` run, in one process.

    python -m bench.memory                                  # configs/paper.py, synthetic data, 3 steps
    python -m bench.memory --config configs/digits.py
    python -m bench.memory --config configs/paper.py --config.batch_size=64 --overlap

It runs alexnet_jax.main's own `main` (flags, set-up, the train loop, its
inspection, evaluation and save) with bench/memory_stages.py's hooks marking
the stages: start-up (imports), set-up (checks, data), the state, each
jitted program's compile (the train step at each micro-batch size the first
run times, the inspection and evaluation steps), the micro-batch timing,
the first batches, the first step, each inspection (its summaries written),
the evaluation and the save (its files written). A thread samples RSS every
few milliseconds; the table gives each stage's own peak, the process's peak
so far (ru_maxrss) and the RSS at its end.

Defaults ahead of the given overrides (which win): `--config.dataset=synthetic`,
`--config.num_train_steps=3` (an inspection at steps 1 and 3; the evaluation and
the save at step 3), a fresh workdir and a fresh `--config.compilation_cache_dir`
in a temporary folder, so the run is a first run: nothing compiled or
measured before (its micro-batch timing runs where the config's
micro_batch_size=-1 asks for one). `--workdir` keeps the run's folder.

`--overlap` leaves each action's asynchronous work (TensorBoard writes,
orbax's checkpoint writes) overlapping what follows, as in a real run;
by default each action waits for its own, so its memory shows in its row.
"""

from __future__ import annotations

import shlex
import sys
import tempfile

from absl import app, flags

from alexnet_jax.platform import cpu_info, machine_settings

flags.DEFINE_bool("overlap", False, "Let asynchronous writes overlap the next stage (as a real run does).")

DEFAULT_CONFIG = "configs/paper.py"
DEFAULT_OVERRIDES = ("--config.dataset=synthetic", "--config.num_train_steps=3")


def _has(argv: list[str], name: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in argv)


def run_argv(argv: list[str], scratch: str) -> list[str]:
    """alexnet_jax.main's arguments: the config first, the bench's defaults,
    then the given arguments (a later override wins)."""
    args = list(argv[1:])
    config, rest = DEFAULT_CONFIG, []
    i = 0
    while i < len(args):
        if args[i] == "--config":
            config, i = args[i + 1], i + 2
            continue
        if args[i].startswith("--config="):
            config = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    defaults = list(DEFAULT_OVERRIDES)
    if not _has(rest, "--config.compilation_cache_dir"):
        defaults.append(f"--config.compilation_cache_dir={scratch}/xla_cache")
    if not _has(rest, "--workdir"):
        defaults.append(f"--workdir={scratch}/run")
    return [argv[0], f"--config={config}", *defaults, *rest]


def table(stages: list) -> str:
    lines = [
        "| stage | seconds | stage peak RSS (MB) | peak RSS so far, ru_maxrss (MB) | RSS at its end (MB) |",
        "|---|---|---|---|---|",
    ]
    peak = 0.0
    for s in stages:
        quiet = s.name.endswith("(cont.)") and s.seconds < 0.05 and s.peak_mb <= peak  # nothing to see
        peak = max(peak, s.peak_mb)
        if quiet:
            continue
        lines.append(f"| {s.name} | {s.seconds:.1f} | {s.peak_mb:.0f} | {s.max_rss_mb:.0f} | {s.rss_mb:.0f} |")
    return "\n".join(lines)


def main() -> None:
    from bench import memory_stages

    stages = memory_stages.Stages("start-up: Python, absl, flags")
    command = "python -m bench.memory " + shlex.join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as scratch:
        argv = run_argv(sys.argv, scratch)
        stages.enter("start-up: imports (TensorFlow, JAX, the train loop), devices")
        import jax
        import tensorflow  # noqa: F401  (main imports it first)

        from alexnet_jax import main as entry
        from alexnet_jax.runs import overrides

        jax.devices()
        stages.enter("main: flags, logging")
        restore = None

        def run(args: list[str]) -> None:
            nonlocal restore
            restore = memory_stages.install(stages, overlap=flags.FLAGS.overlap)
            entry.main(args)

        sys.argv = argv  # config_flags reads the overrides from sys.argv
        try:
            app.run(run, argv=argv, flags_parser=overrides.parse_flags)
        except SystemExit as done:
            if done.code not in (0, None):
                raise
        finally:
            if restore:
                restore()
        done = stages.close()
    print(f"machine: {cpu_info.cpu_description()}; {jax.default_backend()} backend, {jax.device_count()} devices")
    print(f"command: {command}")
    print(f"run as: python -m alexnet_jax.main {shlex.join(argv[1:])}")
    print(table(done))
    print(f"peak RSS of the run: {max(s.max_rss_mb for s in done):.0f} MB")


if __name__ == "__main__":
    machine_settings.apply_machine_settings(huge_pages=True, absl_app=False)  # as alexnet_jax.main, first
    main()
