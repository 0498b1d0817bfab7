"""Ensembles of runs (the paper's "5 CNNs"): the mean of the members' class
probabilities, checked against probabilities computed here independently."""

import json
import os
import shlex
import subprocess
import sys

import jax
import numpy as np
import pytest

from alexnet_jax.data import augment, data_stats, pipeline
from alexnet_jax.inference import ensemble
from alexnet_jax.runs import config_json, sweep_status
from alexnet_jax.train import checkpointing, loop, steps
from launch import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(config, workdir, **fields):
    short = config.copy_and_resolve_references()
    short.num_train_steps = 2
    short.eval_every_steps = 2
    for field, value in fields.items():
        setattr(short, field, value)
    loop.train_and_evaluate(short, workdir)
    return short


def _independent_probs(config, workdir):
    """The centre crop's softmax, from the model's apply and the eval pipeline's images."""
    model = steps.create_model(config)
    params, _ = checkpointing.restore_params(workdir, steps.abstract_params(config, model, _mesh()))
    builder = pipeline.get_builder(config)
    stats = data_stats.load_or_compute(config, builder)
    probs = []
    for batch in pipeline.eval_batches(config, builder):
        crops = augment.center_crop(batch["image"].astype(np.float32) - np.asarray(stats.mean), 64)
        logits = model.apply({"params": params}, crops, train=False)
        probs.append(np.asarray(jax.nn.softmax(logits))[batch["mask"].astype(bool)])
    return np.concatenate(probs)


def _mesh():
    from alexnet_jax.parallel import sharding

    return sharding.make_mesh((1, 1))


def test_ensemble_is_the_mean_of_its_members(tiny_config, tmp_path):
    runs = [str(tmp_path / f"seed{seed}") for seed in (0, 1)]
    configs = [_train(tiny_config, run, seed=seed) for seed, run in enumerate(runs)]
    members = [ensemble.evaluate_member(config, run) for config, run in zip(configs, runs)]
    independent = [_independent_probs(config, run) for config, run in zip(configs, runs)]
    for member, probs in zip(members, independent):
        assert member.probs.shape == (360, 10) and member.step == 2
        np.testing.assert_allclose(member.probs, probs, rtol=1e-5, atol=1e-6)
    mean = (independent[0] + independent[1]) / 2
    np.testing.assert_allclose(ensemble.ensemble_probs(members), mean, rtol=1e-5, atol=1e-6)
    labels = members[0].labels
    top1 = np.mean(np.argmax(mean, axis=1) != labels)
    top5 = np.mean([label not in np.argsort(-row)[:5] for row, label in zip(mean, labels)])
    summary = ensemble.summary(ensemble.ensemble_probs(members), labels)
    assert summary["eval_top1_error"] == pytest.approx(top1) and summary["eval_top5_error"] == pytest.approx(top5)
    assert summary["eval_num_examples"] == 360

    result = _evaluate(runs[0], runs[1])
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and all(f"{run}): top-1 error" in line for line, run in zip(lines, runs))
    assert lines[2] == (
        f"test (center, ensemble of 2): top-1 error {100 * top1:.2f}%, top-5 error {100 * top5:.2f}% (360 examples)"
    )

    # A member with another class count is refused before anything is evaluated.
    other = tmp_path / "eleven"
    record = config_json.record_of(configs[0])
    record["config"]["model"]["num_classes"] = 11
    other.mkdir()
    (other / "config.json").write_text(json.dumps(record))
    refused = _evaluate(runs[0], other)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: ensemble members disagree on config.model.num_classes: {runs[0]} has 10, {other} has 11; "
        "an ensemble averages class probabilities of the same classes"
    )


def _evaluate(*workdirs):
    args = [f"--workdir={workdir}" for workdir in workdirs]
    return subprocess.run(
        [sys.executable, "-m", "alexnet_jax.evaluate", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_members_must_share_the_task():
    from configs import digits

    a, b = digits.get_config(), digits.get_config()
    ensemble.check_same_task(["a", "b"], [a, b])
    b.eval_split = "train"
    with pytest.raises(ValueError, match="disagree on config.eval_split: a has 'test', b has 'train'"):
        ensemble.check_same_task(["a", "b"], [a, b])


def test_sweep_members_are_exactly_the_finished_variants(tmp_path):
    workdir = str(tmp_path / "sweep")
    runs = [
        sweep.Run(name, {"seed": i}, os.path.join(workdir, name), ["-m", "alexnet_jax.main", f"--config.seed={i}"])
        for i, name in enumerate(["seed=0", "seed=1", "seed=2", "seed=3"])
    ]
    sweep.write_manifest(workdir, "configs/digits.py", "s.py", [], runs)
    for run, args in [(runs[0], runs[0].args), (runs[1], [*runs[1].args, "--config.num_train_steps=9"])]:
        os.makedirs(run.workdir)
        with open(os.path.join(run.workdir, sweep.DONE), "w") as f:
            json.dump({"args": args}, f)
    os.makedirs(runs[2].workdir)  # started, not finished; runs[3] never started
    assert sweep_status.finished_workdirs(workdir) == [runs[0].workdir]
    assert shlex.split(json.load(open(os.path.join(workdir, sweep.MANIFEST)))["runs"][0]["command"])[1:] == runs[0].args
    with pytest.raises(ValueError, match="sweep.json not found"):
        sweep_status.finished_workdirs(str(tmp_path / "nothing"))
