"""The training loop end to end on the embedded digits, tiny and fast."""

import functools
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from alexnet_jax.data import data_stats, pipeline
from alexnet_jax.parallel import sharding
from alexnet_jax.runs.validation import validate_config
from alexnet_jax.train import checkpointing, loop, steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _first_batch(config):
    builder = pipeline.get_builder(config)
    return next(pipeline.train_batches(config, builder)), builder


def test_one_step_golden_value(tiny_config):
    """Loss and a parameter checksum after one step from seed 0, and a
    checksum of how far two steps moved the parameters (the update itself).

    If this fails after a deliberate change to the model, the optimiser, the
    init or the input order, check the change is intended, then update the
    numbers below (print them from this test). An unintended failure means
    the numerics of a training step changed. Run with the default kernel
    gradients (GEMMs on CPUs), which tiny_config turns off for speed.
    """
    tiny_config.model.conv_wgrad = "auto"
    local_batch, builder = _first_batch(tiny_config)
    mesh = sharding.make_mesh(tiny_config.mesh)
    model = steps.create_model(tiny_config)
    state = steps.create_train_state(tiny_config, model, steps_per_epoch=89, mesh=mesh)
    stats = data_stats.load_or_compute(tiny_config, builder)
    step = jax.jit(functools.partial(steps.train_step, config=tiny_config, stats=stats))
    initial = state.params
    batch = sharding.global_batch(local_batch, mesh)
    state, metrics = step(state, batch, jax.random.key(1))
    loss = float(metrics.loss.compute())
    checksum = float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(state.params)))
    # What the updates did (0.4% of the checksum above, which a wrong update
    # within its tolerance of the init passes); a second step adds the momentum.
    state, _ = step(state, batch, jax.random.key(1))
    moved = jax.tree.map(lambda new, old: np.float64(new) - np.float64(old), state.params, initial)
    update_checksum = float(sum(np.abs(x).sum() for x in jax.tree.leaves(moved)))
    print(f"golden: loss={loss!r} checksum={checksum!r} update_checksum={update_checksum!r}")
    assert loss == pytest.approx(GOLDEN_LOSS, rel=1e-4), GOLDEN_ADVICE
    assert checksum == pytest.approx(GOLDEN_CHECKSUM, rel=1e-5), GOLDEN_ADVICE
    assert update_checksum == pytest.approx(GOLDEN_UPDATE_CHECKSUM, rel=1e-4), GOLDEN_ADVICE


# Since the paper's dropout became the default (model.dropout_scaling="test");
# with flax's inverted dropout ("train") this step gives the earlier
# 4.09174108505249 / 11605.465419747881 (input order per (seed, epoch)).
GOLDEN_LOSS = 2.501275062561035
GOLDEN_CHECKSUM = 11604.124220034479
# sum |parameters after two steps - initial ones| (float64).
GOLDEN_UPDATE_CHECKSUM = 43.45653131550064
GOLDEN_ADVICE = (
    "the numerics of a training step changed. If you changed the model, optimiser, init, augmentation or input "
    "order on purpose, rerun `pytest tests/test_train.py -k golden -s`, check the printed values are what you "
    "expect, and update GOLDEN_* in tests/test_train.py (say why in the commit); otherwise it is a regression"
)


def _final_params(workdir, config):
    mesh = sharding.make_mesh(config.mesh)
    template = steps.create_train_state(config, steps.create_model(config), 89, mesh)
    manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
    state, step = checkpointing.restore_latest(manager, template)
    manager.close()
    return state, step


def test_stop_and_resume_matches_uninterrupted_run(tiny_config, tmp_path):
    uninterrupted = str(tmp_path / "a")
    loop.train_and_evaluate(tiny_config, uninterrupted)

    resumed = str(tmp_path / "b")
    first_half = tiny_config.copy_and_resolve_references()
    first_half.num_train_steps = 3
    loop.train_and_evaluate(first_half, resumed)
    assert _final_params(resumed, tiny_config)[1] == 3
    summary = loop.train_and_evaluate(tiny_config, resumed)  # resumes at 3, runs 4..6

    state_a, step_a = _final_params(uninterrupted, tiny_config)
    state_b, step_b = _final_params(resumed, tiny_config)
    assert step_a == step_b == 6
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert summary["eval_num_examples"] == 360  # every test digit exactly once


def test_checkpoint_holds_the_data_position_and_checks_it_on_resume(tiny_config, tmp_path):
    workdir = str(tmp_path / "position")
    loop.train_and_evaluate(tiny_config, workdir)
    manager = checkpointing.make_manager(workdir, tiny_config.keep_checkpoints)
    template = steps.create_train_state(tiny_config, steps.create_model(tiny_config), 89, sharding.make_mesh((1, 1)))
    _, step, data = checkpointing.restore_latest_with_data(manager, template)
    manager.close()
    assert step == 6
    assert data["epoch"] == 0 and data["batch_in_epoch"] == 6 and data["examples_seen"] == 96
    assert data["local_batch_size"] == 16 and data["process_count"] == 1 and data["steps_per_epoch"] == 89
    # A position past an epoch's end rolls over; one from a checkpoint is used as saved.
    resumed = pipeline.resume_position(tiny_config, {**data, "batch_in_epoch": 90}, 90, 89)
    assert resumed == pipeline.StreamPosition(epoch=1, batch=1)
    assert pipeline.resume_position(tiny_config, None, 95, 89) == pipeline.StreamPosition(1, 6)

    changed = tiny_config.copy_and_resolve_references()
    changed.batch_size = 32
    changed.num_train_steps = 8
    # The saved position's own check, for workdirs without config.json (which would refuse first).
    os.remove(os.path.join(workdir, "config.json"))
    with pytest.raises(ValueError) as error:
        loop.train_and_evaluate(changed, workdir)
    message = str(error.value)
    assert "batch_size=16" in message and "now 32" in message and "\n" not in message


def test_synthetic_data_needs_no_dataset(tiny_config, tmp_path, monkeypatch):
    config = tiny_config.copy_and_resolve_references()
    config.dataset = "synthetic"
    config.data_stats = "computed"  # synthetic data has none: the published ones are used
    config.num_train_steps = 2
    monkeypatch.setattr(pipeline, "get_builder", lambda config: pytest.fail("synthetic data read tfds"))
    summary = loop.train_and_evaluate(config, str(tmp_path / "synthetic"))
    assert summary["eval_num_examples"] == config.eval_batch_size
    assert np.isfinite(summary["eval_loss"])


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path):
    workdir = str(tmp_path / "nan")
    good = tiny_config.copy_and_resolve_references()
    good.num_train_steps = 3
    loop.train_and_evaluate(good, workdir)

    exploding = tiny_config.copy_and_resolve_references()
    exploding.num_train_steps = 12
    exploding.optimizer.learning_rate = 1e12
    # A changed rate is refused on a restart (config.json): this stands for a run that diverges by itself.
    os.remove(os.path.join(workdir, "config.json"))
    with pytest.raises(FloatingPointError, match=r"at step \d+"):
        loop.train_and_evaluate(exploding, workdir)

    steps = ocp.CheckpointManager(os.path.join(workdir, "checkpoints")).all_steps()
    assert 3 in steps
    state, step = _final_params(workdir, tiny_config)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params)), step


def test_tensorboard_event_files_hold_the_scalars(tiny_config, tmp_path):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    workdir = str(tmp_path / "tb")
    loop.train_and_evaluate(tiny_config, workdir)
    events = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    for tag in [
        "train_loss",
        "train_top1_error",
        "train_top5_error",
        "train_learning_rate",
        "images_per_sec",
        "steps_per_sec",
        "eval_loss",
        "eval_top1_error",
        "eval_top5_error",
        "eval_num_examples",
    ]:
        assert tag in tags, f"{tag} missing from {sorted(tags)}"
    # inspect_every_steps=0 (tiny_config): no inspection at all, not even at the first and last steps.
    assert not [tag for tag in tags if tag.startswith(("weights/", "grads/", "grad_norm/", "train_inputs"))]
    losses = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors("train_loss")]
    assert [e.step for e in events.Tensors("train_loss")] == [2, 4, 6] and all(np.isfinite(losses))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("batch_size", 12, "config.batch_size=12 must be divisible by the 8 data-parallel devices"),
        ("mesh", (16, 1), "config.mesh=(16, 1) needs 16 devices but there are 8"),
        ("mesh", (-1, 3), "config.mesh=(-1, 3) has a model axis of 3"),
        ("model.activation", "gelu", "config.model.activation='gelu' must be one of"),
        ("model.pool_window", 4, "config.model.pool_window=4 must be one of (2, 3)"),
        ("model.input_size", 32, "config.model.input_size=32 is too small"),
        ("model.towers", 3, "config.model.towers=3 must be one of (1, 2)"),
        ("optimizer.schedule", "cosine", "config.optimizer.schedule='cosine' must be one of"),
        ("optimizer.learning_rate", -0.1, "config.optimizer.learning_rate=-0.1 must be > 0"),
        ("optimizer.drop_epochs", (51, 25), "config.optimizer.drop_epochs=(51, 25) must be strictly increasing"),
        ("eval_every_steps", 0, "config.eval_every_steps=0 must be a positive integer"),
        ("inspect_every_steps", -1, "config.inspect_every_steps=-1 must be an integer >= 0 (0 = never inspect)"),
        ("resize_size", 60, "config.resize_size=60 must be >= model.input_size=64"),
        ("dataset", "", "config.dataset='' must be a tfds dataset name"),
        ("dataset", "synthetic_data", "config.dataset='synthetic_data' is not a dataset: use 'synthetic'"),
        ("cache_format", "tfrecord", "config.cache_format='tfrecord' must be one of ('jpeg', 'png', 'raw', 'none')"),
        ("prefetch_batches", 0, "config.prefetch_batches=0 must be a positive integer"),
    ],
)
def test_invalid_config_is_rejected_with_its_field(tiny_config, field, value, message):
    config = tiny_config.copy_and_resolve_references()
    config.mesh = (-1, 1)
    parent, _, leaf = field.rpartition(".")
    (config[parent] if parent else config)[leaf] = value
    with pytest.raises(ValueError) as error:
        validate_config(config)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_main_uses_the_configured_compilation_cache_unless_the_environment_sets_one(tmp_path, monkeypatch):
    from alexnet_jax import main

    before = jax.config.jax_compilation_cache_dir
    try:
        main.use_compilation_cache(jax, str(tmp_path / "from_env_wins"))  # conftest sets the variable
        assert jax.config.jax_compilation_cache_dir == before
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
        main.use_compilation_cache(jax, "")
        assert jax.config.jax_compilation_cache_dir == before
        monkeypatch.setenv("HOME", str(tmp_path))
        main.use_compilation_cache(jax, "~/xla")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_bad_config_writes_nothing(tiny_config, tmp_path):
    config = tiny_config.copy_and_resolve_references()
    config.model.num_classes = 7
    workdir = tmp_path / "never"
    with pytest.raises(ValueError, match="config.model.num_classes=7 but sklearn_digits has 10 classes"):
        loop.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_paper_config_without_imagenet_says_where_to_put_the_tars(tmp_path):
    workdir = tmp_path / "paper"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alexnet_jax.main",
            "--config",
            "configs/paper.py",
            f"--workdir={workdir}",
            f"--config.data_dir={tmp_path / 'tfds'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: imagenet2012 is not prepared")
    assert "ILSVRC2012_img_train.tar" in last_line and str(tmp_path / "tfds" / "downloads" / "manual") in last_line
    assert f"then rerun `python -m alexnet_jax.main --config configs/paper.py --workdir={workdir} " in last_line
    assert "Traceback" not in result.stderr
    assert not workdir.exists()


def test_manual_dir_follows_tfds_data_dir(tmp_path, monkeypatch):
    """With config.data_dir empty, tfds prepares under $TFDS_DATA_DIR: the tars are looked for there too."""
    from configs import paper

    config = paper.get_config()
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "shared_tfds"))
    assert pipeline.manual_dir(config) == str(tmp_path / "shared_tfds" / "downloads" / "manual")
    config.data_dir = str(tmp_path / "mine")
    assert pipeline.manual_dir(config) == str(tmp_path / "mine" / "downloads" / "manual")
    config.manual_dir = str(tmp_path / "tars")
    assert pipeline.manual_dir(config) == str(tmp_path / "tars")


def test_unwritable_workdir_and_a_failed_save_are_one_line(tiny_config, tmp_path, monkeypatch):
    """A workdir that cannot be written is named at start-up; a save that fails
    mid-run names the folder, and the earlier checkpoints stay readable."""
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(ValueError, match=r"--workdir .*a_file/run is not writable \(Not a directory\)"):
        loop.train_and_evaluate(tiny_config, str(tmp_path / "a_file" / "run"))

    workdir = str(tmp_path / "full")
    real_save = ocp.CheckpointManager.save

    def disk_full_after_step_3(self, step, *args, **kwargs):
        if step > 3:
            raise OSError(28, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", disk_full_after_step_3)
    with pytest.raises(checkpointing.SaveError) as error:
        loop.train_and_evaluate(tiny_config, workdir)
    message = str(error.value)
    assert message.startswith(f"saving the checkpoint of step 6 in {os.path.join(workdir, 'checkpoints')} failed")
    assert "No space left on device" in message and "earlier checkpoints are intact" in message
    assert "\n" not in message
    assert _final_params(workdir, tiny_config)[1] == 3


def test_inspected_gradients_are_those_the_step_applies_under_micro_batching(tiny_config, tmp_path, monkeypatch):
    """micro_batch_size=-1 measured as 8: TensorBoard's gradients are the
    step's (same micro-batches, same dropout keys), not the whole batch's.
    The first update (no momentum yet) is -rate (g + decay w), -2 rate g for biases."""
    from alexnet_jax.train import micro_batch, summaries

    monkeypatch.setattr(micro_batch, "should_measure", lambda config: True)
    monkeypatch.setattr(micro_batch, "candidates", lambda config: (0, 8))
    monkeypatch.setattr(micro_batch, "read_choice", lambda path, key: 8)  # "measured before"
    inspected = []
    monkeypatch.setattr(summaries, "write_inspection", lambda w, step, insp, c: inspected.append(jax.device_get(insp)))
    config = tiny_config.copy_and_resolve_references()
    config.micro_batch_size, config.num_train_steps, config.inspect_every_steps = -1, 1, 1
    workdir = str(tmp_path / "inspect")
    loop.train_and_evaluate(config, workdir)
    (inspection,) = inspected
    after, _ = _final_params(workdir, config)
    rate, decay = config.optimizer.learning_rate, config.optimizer.weight_decay

    def applied_gradient(path, before, new):
        moved = np.float64(before) - np.float64(new)
        if path[-1].key == "bias":
            return moved / (config.optimizer.bias_lr_multiplier * rate)
        return moved / rate - decay * np.float64(before)

    applied = jax.tree_util.tree_map_with_path(applied_gradient, inspection.params, after.params)
    applied = {jax.tree_util.keystr(path): x for path, x in jax.tree_util.tree_leaves_with_path(applied)}
    for path, grad in jax.tree_util.tree_leaves_with_path(inspection.grads):
        name = jax.tree_util.keystr(path)
        np.testing.assert_allclose(grad, applied[name], rtol=1e-3, atol=2e-5, err_msg=name)


def test_images_per_sec_counts_training_steps_only(tiny_config, tmp_path, monkeypatch):
    """On a clock where a step takes 1 s and every evaluation, inspection,
    save and the first (compiling) call 1000 s, every period reads 16 images/s."""
    from alexnet_jax.train import evaluation, micro_batch, summaries, throughput

    now = [0.0]
    monkeypatch.setattr(throughput, "clock", lambda: now[0])

    def taking(seconds, fn):
        def timed(*args, **kwargs):
            now[0] += seconds
            return fn(*args, **kwargs)

        return timed

    make_train_fn = micro_batch.make_train_fn

    def train_fn(*args):
        micro, step = make_train_fn(*args)
        calls = [0]

        def first_slow(*step_args):
            calls[0] += 1
            now[0] += 1000.0 if calls[0] == 1 else 1.0
            return step(*step_args)

        return micro, first_slow

    monkeypatch.setattr(micro_batch, "make_train_fn", train_fn)
    monkeypatch.setattr(evaluation, "evaluate", taking(1000.0, evaluation.evaluate))
    monkeypatch.setattr(summaries, "write_inspection", taking(1000.0, summaries.write_inspection))
    monkeypatch.setattr(checkpointing, "save", taking(1000.0, checkpointing.save))
    written, create_writer = [], summaries.create_writer

    def recording_writer(*args, **kwargs):
        writer = create_writer(*args, **kwargs)
        write_scalars = writer.write_scalars

        def recorded(step, scalars):
            written.append((step, dict(scalars)))
            write_scalars(step, scalars)

        writer.write_scalars = recorded
        return writer

    monkeypatch.setattr(summaries, "create_writer", recording_writer)
    config = tiny_config.copy_and_resolve_references()
    config.inspect_every_steps = 3
    loop.train_and_evaluate(config, str(tmp_path / "rate"))
    rates = [(step, scalars["images_per_sec"]) for step, scalars in written if "images_per_sec" in scalars]
    assert rates == [(2, 16.0), (4, 16.0), (6, 16.0)]  # steps 3 and 6 evaluate, inspect and save
