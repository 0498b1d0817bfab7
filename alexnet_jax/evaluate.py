"""Evaluates trained runs on a whole split, alone or as an ensemble.

    python -m alexnet_jax.evaluate --workdir runs/paper [--config.eval_views=ten_view]
    python -m alexnet_jax.evaluate --workdir runs/a --workdir runs/b ...   # an ensemble
    python -m alexnet_jax.evaluate --sweep runs/seeds                     # every finished variant

Each run is read with its own `<workdir>/config.json` (the config it was
trained with); `--config.*` overrides that do not change the network
(`eval_split`, `eval_views`, `eval_batch_size`, `data_dir`, `mesh`, ...)
apply on top, any other is refused in one line. Restores the parameters of
the newest checkpoint, evaluates `eval_split` (centre crop or the paper's 10
views, or 5 for a run trained without flips; every example counted once)
and prints one line per run, naming the views (center, ten_view, five_view):
`validation (ten_view, step 450000): top-1 error 40.66%, top-5 error 18.21% (50000 examples)`,
then, for several runs, the ensemble's (the mean of their class
probabilities, the paper's method):
`validation (ten_view, ensemble of 5): top-1 error 38.10%, top-5 error 16.40% (50000 examples)`.
"""

from __future__ import annotations

import ml_collections
from absl import app, flags, logging

from alexnet_jax import errors
from alexnet_jax.data import augment
from alexnet_jax.inference import ensemble
from alexnet_jax.runs import overrides, reading

FLAGS = flags.FLAGS


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict[str, float], int]:
    """(summary, step): `eval_top1_error`, `eval_top5_error`, `eval_loss` and
    `eval_num_examples` of the newest checkpoint in `workdir` on `config.eval_split`."""
    member = ensemble.evaluate_member(config, workdir)
    return ensemble.summary(member.probs, member.labels), member.step


def result_line(split: str, what: str, summary: dict[str, float]) -> str:
    return (
        f"{split} ({what}): top-1 error {100 * summary['eval_top1_error']:.2f}%, "
        f"top-5 error {100 * summary['eval_top5_error']:.2f}% ({summary['eval_num_examples']} examples)"
    )


@errors.one_line_errors
def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise errors.UsageError(f"unexpected arguments {argv[1:]}: give every value as a flag (--name=value)")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # tf.data only; keep TensorFlow off the accelerators
    logging.set_verbosity(logging.WARNING)  # orbax's restore chatter would bury the result
    workdirs = reading.workdirs()
    configs = [reading.config_for(workdir) for workdir in workdirs]  # every refusal before any evaluation
    ensemble.check_same_task(workdirs, configs)
    members = []
    for config, workdir in zip(configs, workdirs):
        member = ensemble.evaluate_member(config, workdir)
        if members:
            ensemble.check_same_order(members[0], member)
        members.append(member)
        summary = ensemble.summary(member.probs, member.labels)
        views = augment.effective_views(config.eval_views, config.random_flip)
        where = f"{views}, step {member.step}" + (f", {workdir}" if len(workdirs) > 1 else "")
        print(result_line(config.eval_split, where, summary), flush=True)
    if len(members) > 1:
        views = {augment.effective_views(m.config.eval_views, m.config.random_flip) for m in members}
        what = f"{views.pop() if len(views) == 1 else 'mixed views'}, ensemble of {len(members)}"
        summary = ensemble.summary(ensemble.ensemble_probs(members), members[0].labels)
        print(result_line(members[0].config.eval_split, what, summary), flush=True)


if __name__ == "__main__":
    from alexnet_jax.platform import machine_settings

    machine_settings.apply_machine_settings()  # before JAX starts its backends
    reading.define_flags(several_workdirs=True)
    app.run(main, flags_parser=overrides.parse_flags)
