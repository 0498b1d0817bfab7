"""Defaults chosen from the machine: `micro_batch_size=-1` resolves to
micro-batches on CPUs for paper-sized batches and to the whole batch
elsewhere (the update it gives is tested in test_sharding)."""

import pytest

from alexnet_jax import machine_defaults
from configs import digits, paper


def _config(module, batch, mesh=(1, 1), model_parallel="towers", micro=-1):
    config = module.get_config()
    config.batch_size = batch
    config.mesh = mesh
    config.model_parallel = model_parallel
    config.micro_batch_size = micro
    return config


@pytest.mark.parametrize(
    "module, batch, mesh, model_parallel, backend, expected",
    [
        (paper, 128, (1, 1), "towers", "cpu", 32),  # the paper step: 4 micro-batches of 32 (BENCHMARKS.md)
        (paper, 128, (1, 1), "towers", "gpu", 0),  # accelerators: the whole batch
        (paper, 128, (1, 1), "towers", "tpu", 0),
        (digits, 128, (1, 1), "towers", "cpu", 0),  # 64x64 digits: 128 fit the budget of 392
        (paper, 256, (2, 1), "towers", "cpu", 64),  # 128 per device: 32 on each of 2
        (paper, 128, (4, 2), "towers", "cpu", 0),  # 32 per data-parallel device: within the budget
        (paper, 128, (1, 8), "dense", "cpu", 0),  # "dense" spreads the batch over all 8: 16 each
        (paper, 74, (1, 1), "towers", "cpu", 0),  # 74 = 2 x 37: micro-batches of 2 would be slow
        (paper, 96, (1, 1), "towers", "cpu", 32),
        (paper, 120, (1, 1), "towers", "cpu", 30),
    ],
)
def test_auto_micro_batch_size(module, batch, mesh, model_parallel, backend, expected):
    config = _config(module, batch, mesh, model_parallel)
    assert machine_defaults.micro_batch_size(config, backend) == expected


@pytest.mark.parametrize("micro", [0, 16])
def test_a_set_micro_batch_size_is_kept_on_every_backend(micro):
    for backend in ("cpu", "gpu"):
        assert machine_defaults.micro_batch_size(_config(paper, 128, micro=micro), backend) == micro


def test_the_default_is_chosen_for_the_machine():
    from configs import default

    assert default.get_config().micro_batch_size == machine_defaults.AUTO
