"""Defaults chosen from the machine: `micro_batch_size=-1` resolves to
micro-batches on CPUs for batches beyond 128 paper-sized images per device
and to the whole batch elsewhere (the update it gives is tested in test_sharding)."""

import pytest

from alexnet_jax.platform import machine_defaults
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
        (paper, 128, (1, 1), "towers", "cpu", 0),  # the paper step: the whole batch (BENCHMARKS.md)
        (paper, 128, (1, 1), "towers", "gpu", 0),  # accelerators: the whole batch
        (paper, 512, (1, 1), "towers", "tpu", 0),
        (digits, 512, (1, 1), "towers", "cpu", 0),  # 64x64 digits: 512 fit the budget of 1568
        (paper, 256, (1, 1), "towers", "cpu", 128),  # beyond the budget: 2 micro-batches of 128
        (paper, 512, (2, 1), "towers", "cpu", 256),  # 256 per device: 128 on each of 2
        (paper, 256, (1, 8), "dense", "cpu", 0),  # "dense" spreads the batch over all 8: 32 each
        (paper, 192, (1, 1), "towers", "cpu", 96),
        (paper, 262, (1, 1), "towers", "cpu", 0),  # 262 = 2 x 131: micro-batches of 2 would be slow
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
