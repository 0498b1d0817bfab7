"""tfds datasets by name: imagenet2012 prepared offline from tiny ILSVRC2012
tar files through the real tfds builder, mock imagenet2012 and cifar10,
split-name and dataset-name errors."""

import functools
import io
import os
import tarfile

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from alexnet_jax.data import augment, pipeline
from alexnet_jax.parallel import sharding
from alexnet_jax.runs.validation import validate_config
from alexnet_jax.train import loop, steps

SYNSETS_USED = 4  # of the 1000; each gets IMAGES_PER_SYNSET training JPEGs
IMAGES_PER_SYNSET = 4
NUM_VAL = 8  # tfds labels the first NUM_VAL names of its 50,000-line label file


def _imagenet_file(name: str) -> str:
    return os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012", name)


def _jpeg(rng: np.random.Generator) -> bytes:
    height, width = rng.integers(8, 40, size=2)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="session")
def imagenet_manual_dir(tmp_path_factory) -> str:
    """ILSVRC2012_img_train.tar (one tar per synset of n*_k.JPEG files) and
    ILSVRC2012_img_val.tar (ILSVRC2012_val_%08d.JPEG), laid out as the real ones."""
    folder = tmp_path_factory.mktemp("manual")
    rng = np.random.default_rng(0)
    with open(_imagenet_file("labels.txt")) as f:
        synsets = f.read().split()[:SYNSETS_USED]
    with tarfile.open(folder / "ILSVRC2012_img_train.tar", "w") as train_tar:
        for synset in synsets:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as synset_tar:
                for k in range(IMAGES_PER_SYNSET):
                    _add(synset_tar, f"{synset}_{10026 + k}.JPEG", _jpeg(rng))
            _add(train_tar, f"{synset}.tar", inner.getvalue())
    with tarfile.open(folder / "ILSVRC2012_img_val.tar", "w") as val_tar:
        for i in reversed(range(1, NUM_VAL + 1)):  # tfds sorts the names: the order in the tar must not matter
            _add(val_tar, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg(rng))
    return str(folder)


def _imagenet_config(tiny_config, manual_dir: str, data_dir: str):
    config = tiny_config.copy_and_resolve_references()
    config.dataset = "imagenet2012"
    config.manual_dir = manual_dir
    config.data_dir = data_dir
    config.train_split, config.eval_split = "train", "validation"
    config.model.num_classes = 1000
    config.random_flip = True
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_train_steps = 2
    config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
    return config


def test_imagenet2012_prepared_offline_from_the_tars_then_trained(tiny_config, imagenet_manual_dir, tmp_path):
    config = _imagenet_config(tiny_config, imagenet_manual_dir, str(tmp_path / "tfds"))
    summary = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["eval_num_examples"] == NUM_VAL and np.isfinite(summary["eval_loss"])

    builder = pipeline.get_builder(config)  # prepared now: read back, nothing redone
    assert builder.info.splits["train"].num_examples == SYNSETS_USED * IMAGES_PER_SYNSET
    assert builder.info.splits["validation"].num_examples == NUM_VAL
    assert "test" not in builder.info.splits  # no ILSVRC2012_img_test.tar: tfds skips the split
    # Validation labels come from tfds's label file, line i for the i-th name in sorted order.
    with open(_imagenet_file("validation_labels.txt")) as f:
        expected = f.read().split()[:NUM_VAL]
    label = builder.info.features["label"]
    got = {
        ex["file_name"].decode(): label.int2str(ex["label"])
        for ex in tfds.as_numpy(builder.as_dataset(split="validation"))
    }
    assert got == {f"ILSVRC2012_val_{i + 1:08d}.JPEG": synset for i, synset in enumerate(expected)}
    train_labels = {label.int2str(ex["label"]) for ex in tfds.as_numpy(builder.as_dataset(split="train"))}
    with open(_imagenet_file("labels.txt")) as f:
        assert train_labels == set(f.read().split()[:SYNSETS_USED])


@pytest.mark.parametrize(
    "present, missing",
    [
        ((), "ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar"),
        (("ILSVRC2012_img_val.tar",), "ILSVRC2012_img_train.tar"),
    ],
)
def test_missing_imagenet_tars_are_named_with_the_folder(tiny_config, tmp_path, present, missing):
    folder = tmp_path / "manual"
    folder.mkdir()
    for name in present:
        (folder / name).write_bytes(b"")
    config = _imagenet_config(tiny_config, str(folder), str(tmp_path / "tfds"))
    workdir = tmp_path / "run"
    with pytest.raises(pipeline.DatasetUnavailableError) as error:
        loop.train_and_evaluate(config, str(workdir))
    message = str(error.value)
    assert message.startswith(f"imagenet2012 is not prepared and {missing} not found in {folder}: ")
    assert "--config.manual_dir=DIR" in message and "\n" not in message
    assert not workdir.exists()


def _write_metadata(data_dir: str, name: str, split_sizes: dict[str, int]) -> None:
    """What a prepared dataset's folder holds besides its records
    (dataset_info.json, label names), with the given split sizes: tfds's mock
    then knows the real split names and sizes."""
    builder = tfds.builder(name, data_dir=data_dir)
    splits = [tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0) for s, n in split_sizes.items()]
    builder.info.set_splits(tfds.core.SplitDict(splits))
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)


@pytest.fixture(scope="module")
def mock_metadata_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("mock_metadata"))
    _write_metadata(data_dir, "imagenet2012", {"train": 16, "validation": 16})
    _write_metadata(data_dir, "cifar10", {"train": 16, "test": 16})
    return data_dir


@pytest.mark.parametrize("name, classes", [("imagenet2012", 1000), ("cifar10", 10)])
def test_mock_dataset_batches_and_a_train_step(tiny_config, mock_metadata_dir, name, classes):
    config = _imagenet_config(tiny_config, "", mock_metadata_dir)
    config.dataset, config.model.num_classes = name, classes
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=mock_metadata_dir):
        builder = pipeline.get_builder(config)
        raw = [ex["image"].shape for ex in tfds.as_numpy(builder.as_dataset(split="train"))]
        batch = next(pipeline.train_batches(config, builder))
    if name == "imagenet2012":  # random sizes: the pipeline resizes the shorter side, then crops
        assert len(set(raw)) > 1 and any(h != w for h, w, _ in raw)
    assert batch["image"].shape == (8, config.resize_size, config.resize_size, 3)
    assert batch["image"].dtype == np.uint8
    assert batch["label"].min() >= 0 and batch["label"].max() < classes

    mesh = sharding.make_mesh(config.mesh)
    state = steps.create_train_state(config, steps.create_model(config), steps_per_epoch=2, mesh=mesh)
    step = jax.jit(functools.partial(steps.train_step, config=config, stats=augment.published_stats(config.mean_rgb)))
    state, metrics = step(state, sharding.global_batch(batch, mesh), jax.random.key(0))
    assert int(state.step) == 1 and np.isfinite(float(metrics.loss.compute()))


def test_cifar10_without_a_validation_split_names_the_field_and_the_splits(tiny_config, mock_metadata_dir, tmp_path):
    config = _imagenet_config(tiny_config, "", mock_metadata_dir)
    config.dataset, config.model.num_classes = "cifar10", 10  # eval_split stays "validation"
    workdir = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=mock_metadata_dir):
        with pytest.raises(ValueError) as error:
            loop.train_and_evaluate(config, str(workdir))
    assert str(error.value) == (
        "config.eval_split='validation' is not a split of cifar10: use one of ['test', 'train']"
    )
    assert not workdir.exists()


@pytest.mark.parametrize("name", ["imagenet2013", "cifar10 ", "no/such:1.0.0"])
def test_unknown_dataset_name_is_one_line_naming_the_field(tiny_config, tmp_path, name):
    config = tiny_config.copy_and_resolve_references()
    config.dataset = name
    with pytest.raises(ValueError) as error:
        validate_config(config)
    message = str(error.value)
    assert message.startswith(f"config.dataset={name!r} is not a tfds dataset") and "\n" not in message
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match="is not a tfds dataset"):
        loop.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_a_dataset_that_cannot_be_downloaded_fails_fast_in_one_line(tiny_config, tmp_path, monkeypatch):
    """Offline (here: every request sent to a closed loopback port): one line
    naming the dataset and what to do, in seconds, not minutes of retries."""
    import time

    for variable in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    config = tiny_config.copy_and_resolve_references()
    config.dataset, config.eval_split, config.data_dir = "cifar10", "test", str(tmp_path / "tfds")
    config.model.num_classes = 7
    with pytest.raises(ValueError, match="config.model.num_classes=7 but cifar10 has 10 classes"):
        pipeline.get_builder(config)  # known before any download
    config.model.num_classes = 10
    start = time.monotonic()
    with pytest.raises(pipeline.DatasetUnavailableError) as error:
        pipeline.get_builder(config)
    assert time.monotonic() - start < 60
    message = str(error.value)
    assert message.startswith("cifar10 is not prepared in ") and "could not be downloaded" in message
    assert "--config.data_dir=DIR" in message and "image_folder" in message and "\n" not in message
