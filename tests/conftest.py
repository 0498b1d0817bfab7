"""Eight forced CPU devices and the project's XLA:CPU flag, set before jax is
imported anywhere, so sharding code runs on a machine without accelerators."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Many tests train the same tiny model in fresh jitted functions (and the
# multi-process ones in fresh processes, which inherit this environment):
# JAX's persistent compilation cache compiles each distinct program once per
# session instead of once per run (the stop-and-resume test: 100 s -> 46 s).
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="alexnet-jax-tests-xla-")
atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _COMPILATION_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from alexnet_jax.platform import xla_cpu_flags  # noqa: E402

# The project's XLA:CPU flag, applied as its entry points apply it (importing
# alexnet_jax changes nothing): XLA's own convolution kernels make the CPU
# tests' steps faster (the digits step 2.5x), and subprocesses inherit it.
xla_cpu_flags.apply()


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory) -> str:
    """A tfds data_dir with the embedded digits prepared once per session."""
    import tensorflow_datasets as tfds

    from alexnet_jax.data import digits  # noqa: F401

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("sklearn_digits", data_dir=data_dir).download_and_prepare()
    return data_dir


@pytest.fixture
def tiny_config(digits_data_dir):
    """configs/digits.py shrunk for tests: width 1/8, a few steps, 1 device."""
    from configs import digits

    config = digits.get_config()
    config.data_dir = digits_data_dir
    config.model.width = 0.125
    config.batch_size = 16
    config.eval_batch_size = 64
    config.num_train_steps = 6
    config.log_every_steps = 2
    config.eval_every_steps = 3
    config.checkpoint_every_steps = 3
    # No TensorBoard inspection (its extra pass, histograms and images were
    # about half of a tiny run's time): the tests of it turn it back on.
    config.inspect_every_steps = 0
    config.shuffle_buffer_size = 64
    config.mesh = (1, 1)
    # XLA's own kernel gradients compile ~30% faster than the CPU default's
    # GEMMs; those are tested in test_layers, test_models, test_sharding and
    # by test_one_step_golden_value, which sets the default back.
    config.model.conv_wgrad = "xla"
    return config


@pytest.fixture
def final_state():
    """restore(workdir, config) -> (state, step): a workdir's newest train
    state, restored onto one device whatever layout saved it."""
    from alexnet_jax.parallel import sharding
    from alexnet_jax.train import checkpointing, steps

    def restore(workdir, config):
        template = steps.create_train_state(config, steps.create_model(config), 89, sharding.make_mesh((1, 1)))
        manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
        state, step = checkpointing.restore_latest(manager, template)
        manager.close()
        return state, step

    return restore


# The slowest files (seconds of one worker in a fresh clone's CI, 2-core VM),
# collected first so that the two workers finish together: xdist hands whole
# files out in collection order, and a long file handed out last runs alone.
# The rest keep pytest's order. A stale list costs time, never a result.
SLOWEST_FIRST = (  # measured 2026-12-03 (`pytest --durations=0`): 265 s down to 80 s
    "test_multiprocess.py",
    "test_preemption.py",
    "test_run_config.py",
    "test_train.py",
    "test_folder_lock.py",
    "test_models.py",
    "test_sharding.py",
    "test_damaged_checkpoints.py",
    "test_inference.py",
    "test_sweep.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable
