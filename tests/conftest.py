"""Eight forced CPU devices, set before jax is imported anywhere, so sharding
code runs on a machine without accelerators."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory) -> str:
    """A tfds data_dir with the embedded digits prepared once per session."""
    import tensorflow_datasets as tfds

    from alexnet_jax import digits_dataset  # noqa: F401

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
    config.shuffle_buffer_size = 64
    config.mesh = (1, 1)
    return config
