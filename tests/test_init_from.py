"""Starting from another run (init_from, init_reset) and frozen layers."""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from alexnet_jax.parallel import sharding
from alexnet_jax.train import checkpointing, init_from, loop, steps


def _params(workdir, config):
    mesh = sharding.make_mesh((1, 1))
    params, step = checkpointing.restore_params(
        workdir, steps.abstract_params(config, steps.create_model(config), mesh)
    )
    return jax.tree.map(np.asarray, params), step


def _fresh(config):
    mesh = sharding.make_mesh((1, 1))
    return jax.tree.map(np.asarray, steps.create_train_state(config, steps.create_model(config), 89, mesh).params)


def _equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.fixture
def source(tiny_config, tmp_path):
    """A trained run (2 steps) to start from, and its config."""
    config = tiny_config.copy_and_resolve_references()
    config.num_train_steps = 2
    config.eval_every_steps = 2
    workdir = str(tmp_path / "source")
    loop.train_and_evaluate(config, workdir)
    return workdir, config


def test_init_reset_takes_every_other_layer_bit_for_bit(source, tmp_path):
    workdir, config = source
    trained, _ = _params(workdir, config)
    new = config.copy_and_resolve_references()
    new.seed = 7  # another fresh initialisation, so reset layers are told apart
    new.init_from, new.init_reset = workdir, ("fc8",)
    fresh = _fresh(new)
    step_dir = init_from.resolve(workdir)
    assert step_dir == os.path.join(os.path.abspath(workdir), "checkpoints", "2")
    assert init_from.resolve(step_dir) == step_dir  # a step directory names itself
    params = jax.tree.map(np.asarray, init_from.initial_params(_fresh_on_devices(new), step_dir, ("fc8",)))
    assert _equal(params["fc8"], fresh["fc8"]) and not _equal(params["fc8"], trained["fc8"])
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        assert _equal(params[layer], trained[layer]), layer


def _fresh_on_devices(config):
    mesh = sharding.make_mesh((1, 1))
    return steps.create_train_state(config, steps.create_model(config), 89, mesh).params


def test_a_shape_mismatch_is_refused_naming_the_layer_before_anything_is_written(source, tmp_path):
    workdir, config = source
    other = config.copy_and_resolve_references()
    other.model.width = 0.25  # twice the filters: every layer's shapes differ
    other.init_from = workdir
    new_workdir = tmp_path / "finetune"
    with pytest.raises(ValueError) as error:
        loop.train_and_evaluate(other, str(new_workdir))
    message = str(error.value)
    assert message.startswith("layer conv1 has shapes {") and "(11, 11, 3, 12)" in message and "\n" not in message
    assert "(11, 11, 3, 24)" in message and "in this run: add 'conv1' to config.init_reset" in message
    assert not new_workdir.exists()
    other.init_from = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="config.init_from=.*nowhere' is neither a checkpoint step directory"):
        loop.train_and_evaluate(other, str(new_workdir))


def test_fine_tuning_with_frozen_convolutions_then_resuming_its_own_checkpoint(source, tmp_path, caplog):
    workdir, config = source
    trained, _ = _params(workdir, config)
    tune = config.copy_and_resolve_references()
    tune.init_from = os.path.join(workdir, "checkpoints", "2")  # a step directory
    tune.init_reset = ("fc8",)
    tune.frozen = ("conv1", "conv2", "conv3", "conv4", "conv5")
    tune.num_train_steps = 3
    tune.eval_every_steps = 3
    tune.checkpoint_every_steps = 3
    finetune = str(tmp_path / "finetune")
    with caplog.at_level(logging.INFO):
        loop.train_and_evaluate(tune, finetune)
    taken = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Parameters from ")]
    assert taken == [
        f"Parameters from {tune.init_from}: conv1, conv2, conv3, conv4, conv5, fc6, fc7 taken; fc8 initialised afresh; "
        "conv1, conv2, conv3, conv4, conv5 frozen (not trained)"
    ]
    tuned, step = _params(finetune, tune)
    assert step == 3  # its own schedule from step 0
    for layer in tune.frozen:
        assert _equal(tuned[layer], trained[layer]), layer  # bit-identical after 3 steps
    for layer in ("fc6", "fc7"):
        assert not _equal(tuned[layer], trained[layer]), layer
    with open(os.path.join(finetune, "config.json")) as f:
        record = json.load(f)
    assert record["initialised_from"] == tune.init_from and record["config"]["init_from"] == tune.init_from

    # A restart resumes the fine-tuning run's own checkpoint, not init_from's.
    longer = tune.copy_and_resolve_references()
    longer.num_train_steps = 5
    caplog.clear()
    with caplog.at_level(logging.INFO):
        loop.train_and_evaluate(longer, finetune)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Resumed from the checkpoint of step 3") for m in messages)
    assert not any(m.startswith("Parameters from ") for m in messages)
    resumed, step = _params(finetune, longer)
    assert step == 5 and _equal(resumed["conv3"], trained["conv3"]) and not _equal(resumed["fc7"], tuned["fc7"])


def test_a_restart_before_the_first_checkpoint_starts_from_the_recorded_step(source, tmp_path, caplog):
    """config.json notes the step the run started from; a restart before
    the run's first checkpoint takes it again, not the source's newer one."""
    from alexnet_jax.runs import config_json, restart

    workdir, config = source
    tune = config.copy_and_resolve_references()  # the fine-tuning above's step (compiled once)
    tune.init_from, tune.init_reset, tune.frozen = workdir, ("fc8",), ("conv1", "conv2", "conv3", "conv4", "conv5")
    tune.num_train_steps, tune.eval_every_steps, tune.checkpoint_every_steps = 1, 3, 3
    step2 = os.path.join(os.path.abspath(workdir), "checkpoints", "2")
    finetune = str(tmp_path / "finetune")
    # Its first start found step 2 the newest, wrote config.json, then died before saving;
    # the source has saved step 4 since.
    restart.check_restart(tune, finetune, 0.0, True, {"initialised_from": step2})
    shutil.copytree(step2, os.path.join(workdir, "checkpoints", "4"))
    with caplog.at_level(logging.INFO):
        loop.train_and_evaluate(tune, finetune)
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().startswith("Parameters from")] == [
        f"Parameters from {step2}"
    ]
    assert config_json.load(finetune)["initialised_from"] == step2

    gone = str(tmp_path / "gone")  # a recorded step the source no longer has: one line
    restart.check_restart(tune, gone, 0.0, True, {"initialised_from": step2[:-1] + "3"})
    with pytest.raises(ValueError, match=r"this run started from .*checkpoints/3' \(its config.json\), which is gone"):
        loop.train_and_evaluate(tune, gone)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("frozen", ("conv9",), "config.frozen=('conv9',) must be a tuple of layer names from"),
        ("init_reset", ("fc8",), "config.init_reset=('fc8',) needs config.init_from"),
        ("frozen", ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"), "freezes every layer"),
    ],
)
def test_layer_names_are_validated(tiny_config, field, value, message):
    from alexnet_jax.runs.validation import validate_config

    config = tiny_config.copy_and_resolve_references()
    config[field] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_config(config)
