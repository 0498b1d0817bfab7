"""A damaged newest checkpoint (a file truncated, as by a full disk or a copy
interrupted by hand) does not end the run: it resumes from the one before."""

import logging
import os
import shutil

import jax
import numpy as np
import pytest

from alexnet_jax import checkpointing, train

# orbax leaves the reads it abandons on the damaged files as never-awaited coroutines.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _truncate_largest_file(step_dir: str) -> None:
    """Halves the checkpoint's largest file: the bulk of the parameters."""
    files = [os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)


def test_damaged_newest_checkpoint_falls_back_to_the_one_before(tiny_config, tmp_path, caplog, final_state):
    uninterrupted = str(tmp_path / "uninterrupted")
    train.train_and_evaluate(tiny_config, uninterrupted)  # checkpoints 3 and 6
    workdir = str(tmp_path / "damaged")
    shutil.copytree(uninterrupted, workdir)
    _truncate_largest_file(os.path.join(workdir, "checkpoints", "6"))

    with caplog.at_level(logging.WARNING):
        train.train_and_evaluate(tiny_config, workdir)  # resumes at 3 and saves 6 anew
    newest = os.path.join(workdir, "checkpoints", "6")
    assert f"Checkpoint {newest} cannot be read" in caplog.text
    aside = os.path.join(workdir, checkpointing.DAMAGED, "6")
    assert f"Moved the damaged checkpoint of step 6 to {aside}" in caplog.text and os.path.isdir(aside)

    state_a, step_a = final_state(uninterrupted, tiny_config)
    state_b, step_b = final_state(workdir, tiny_config)
    assert step_a == step_b == 6
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_readable_checkpoint_is_a_one_line_error_naming_the_folder(tiny_config, tmp_path):
    config = tiny_config.copy_and_resolve_references()
    config.num_train_steps = 3
    config.checkpoint_every_steps = 1
    config.eval_every_steps = 100
    workdir = str(tmp_path / "all_damaged")
    train.train_and_evaluate(config, workdir)
    folder = os.path.join(workdir, "checkpoints")
    for step in os.listdir(folder):
        _truncate_largest_file(os.path.join(folder, step))

    with pytest.raises(ValueError) as error:
        train.train_and_evaluate(config, workdir)
    message = str(error.value)
    assert f"no checkpoint in {folder} can be read" in message and "\n" not in message
    assert sorted(os.listdir(folder)) == ["1", "2", "3"]  # nothing moved when nothing is left to resume from
