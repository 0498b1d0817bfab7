"""Top-5 classes of image files under a trained model.

    python -m alexnet_jax.predict --workdir runs/digits a.png b.jpg
    python -m alexnet_jax.predict --workdir runs/a --workdir runs/b a.png   # an ensemble

Restores the newest checkpoint in `--workdir` (read with the run's own
config.json, as evaluate does; several `--workdir`s or `--sweep DIR`: the
ensemble, the mean of their class probabilities), preprocesses
each file as the evaluation pipeline does (shorter side to `resize_size`,
centre crop, then the centre crop or 10 views of `config.eval_views`, the
training set's mean subtracted) and prints one line
per file on stdout: `a.png: <class> <p>% | ...` (the top five), nothing
else. A file that is not an image gets a one-line message on stderr; the
exit status is 1 if any file failed. The statistics and class names are the
run's own (`<workdir>/data_stats.npz`): no dataset is read and nothing is
written outside the workdir. An image whose brightness is the opposite of
the training images' (a black-on-white digit; the embedded digits are white
on black) gets a one-line note on stderr.
"""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf
from absl import app, logging

from alexnet_jax import errors
from alexnet_jax.inference import ensemble, predictions
from alexnet_jax.runs import overrides, reading, run_stats


@errors.one_line_errors
def main(argv: list[str]) -> None:
    paths = argv[1:]
    if not paths:
        raise errors.UsageError("give one or more image files after the flags")
    tf.config.set_visible_devices([], "GPU")  # TensorFlow only resizes; keep it off the accelerators
    logging.set_verbosity(logging.WARNING)  # orbax's restore chatter would bury the predictions
    workdirs = reading.workdirs()
    configs = [reading.config_for(workdir) for workdir in workdirs]
    ensemble.check_same_task(workdirs, configs, fields=("dataset", "image_folder", "model.num_classes"))
    # The runs' own statistics and class names (no dataset; one from before them needs it once).
    runs = [run_stats.for_reading(config, workdir) for config, workdir in zip(configs, workdirs)]
    names = runs[0].class_names
    if len(names) != configs[0].model.num_classes:
        print(f"note: {workdirs[0]} does not name its classes: printing class ids", file=sys.stderr, flush=True)
        names = tuple(str(i) for i in range(configs[0].model.num_classes))
    readable, first_size = [], []
    for path in paths:
        try:
            first_size.append(predictions.load_image(path, configs[0].resize_size))
            readable.append(path)
        except errors.ConfigError as error:  # the other files are still predicted
            print(f"error: {error}", file=sys.stderr, flush=True)
            continue
        note = predictions.polarity_note(first_size[-1], runs[0].stats)
        if note:
            print(f"note: {path}: {note}", file=sys.stderr, flush=True)
    if readable:  # one batch per run: this is for a handful of files
        # Each file is decoded once per resize size the runs use, not once per run.
        by_size = {configs[0].resize_size: np.stack(first_size)}
        for config in configs[1:]:
            if config.resize_size not in by_size:
                images = [predictions.load_image(p, config.resize_size) for p in readable]
                by_size[config.resize_size] = np.stack(images)
        # The ensemble's probabilities: the mean of its runs' (one run: its own).
        members = (
            predictions.member_probs(c, w, by_size[c.resize_size], r.stats) for c, w, r in zip(configs, workdirs, runs)
        )
        probs = sum(members) / len(workdirs)
        for path, row, top in zip(readable, probs, predictions.top_k(probs)):
            print(f"{path}: " + " | ".join(f"{names[i]} {100 * row[i]:.1f}%" for i in top), flush=True)
    if len(readable) < len(paths):
        sys.exit(1)


if __name__ == "__main__":
    from alexnet_jax.platform import machine_settings

    machine_settings.apply_machine_settings()  # before JAX starts its backends
    reading.define_flags(several_workdirs=True)
    app.run(main, flags_parser=overrides.parse_flags)
