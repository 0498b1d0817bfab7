"""A folder of the user's images as the input: layout, preparation once,
corrupt files reported and excluded, training on the rest."""

import io
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_jax.data import image_folder, pipeline
from alexnet_jax.runs.validation import validate_config
from alexnet_jax.train import loop

FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
BROKEN = "train/cat/broken.jpg"  # a JPEG header, then garbage
NOTES = "train/dog/notes.txt"  # not an image at all


def _write_image(path: str, rng: np.random.Generator, fmt: str) -> None:
    """A random image of random size (smaller and larger than resize_size)."""
    height, width = rng.integers(20, 120, size=2)
    pixels = rng.integers(0, 256, (height, width, 3), np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


@pytest.fixture(scope="module")
def pets(tmp_path_factory) -> str:
    """root/{train,validation}/{cat,dog}/: 10 + 4 images per class in six
    formats, a garbage .jpg, a text file and a hidden file (ignored)."""
    root = tmp_path_factory.mktemp("pets")
    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("validation", 4)):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                fmt = FORMATS[i % len(FORMATS)]
                _write_image(str(folder / f"{i}.{fmt.lower()}"), rng, fmt)
    (root / BROKEN).write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (root / NOTES).write_text("taken at the shelter, 2019")
    (root / "train" / "dog" / ".DS_Store").write_bytes(b"\0\1")
    return str(root)


def _folder_config(tiny_config, root: str, data_dir: str):
    config = tiny_config.copy_and_resolve_references()
    config.dataset = "image_folder"
    config.image_folder = root
    config.data_dir = data_dir
    config.train_split, config.eval_split = "train", "validation"
    config.model.num_classes = 2
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_train_steps = 2
    config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
    return config


def _bad_file_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "unreadable" in r.getMessage()]


def test_corrupt_file_is_named_counted_excluded_and_the_rest_trains(tiny_config, pets, tmp_path, caplog):
    config = _folder_config(tiny_config, pets, str(tmp_path / "tfds"))
    with caplog.at_level(logging.WARNING):
        summary = loop.train_and_evaluate(config, str(tmp_path / "run"))

    [warning] = _bad_file_warnings(caplog)
    assert warning.startswith(f"2 unreadable image file(s) in {pets} were excluded")
    builder = pipeline.get_builder(config)
    bad = dict(image_folder.bad_files(builder))
    assert sorted(bad) == [BROKEN, NOTES]
    assert bad[NOTES] == "not an image type TensorFlow or PIL can decode"
    assert bad[BROKEN]  # PIL's reason, e.g. "Truncated File Read"
    assert all(f"{path} ({why})" in warning for path, why in bad.items())
    assert builder.info.splits["train"].num_examples == 20  # 22 files, the two bad ones left out
    assert builder.info.features["label"].names == ["cat", "dog"]
    assert summary["eval_num_examples"] == 8  # every validation image exactly once
    assert np.isfinite(summary["eval_loss"])


def test_prepared_once_warned_every_run_and_redone_when_the_folder_changes(
    tiny_config, pets, tmp_path, caplog, monkeypatch
):
    config = _folder_config(tiny_config, pets, str(tmp_path / "tfds"))
    first = pipeline.get_builder(config)

    def fail(*args, **kwargs):
        raise AssertionError("prepared again although the folder did not change")

    with monkeypatch.context() as patch:
        patch.setattr(image_folder.UserImageFolder, "download_and_prepare", fail)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            again = pipeline.get_builder(config)
        assert again.data_dir == first.data_dir
        assert len(_bad_file_warnings(caplog)) == 1  # from the cached list, nothing decoded

    _write_image(os.path.join(pets, "train", "dog", "new.png"), np.random.default_rng(1), "PNG")
    try:
        changed = pipeline.get_builder(config)
        assert changed.data_dir != first.data_dir
        assert changed.info.splits["train"].num_examples == 21
    finally:
        os.remove(os.path.join(pets, "train", "dog", "new.png"))


def test_batches_are_resized_squares(tiny_config, pets, tmp_path):
    config = _folder_config(tiny_config, pets, str(tmp_path / "tfds"))
    builder = pipeline.get_builder(config)
    raw_shapes = {tuple(ex["image"].shape) for ex in builder.as_dataset(split="validation")}
    assert len(raw_shapes) > 1 and all(shape[-1] == 3 for shape in raw_shapes)
    batch = next(pipeline.train_batches(config, builder))
    assert batch["image"].shape == (8, config.resize_size, config.resize_size, 3)
    assert batch["image"].dtype == np.uint8


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_is_stored_so_the_reader_decodes_it(fmt, tmp_path):
    path = str(tmp_path / f"x.{fmt.lower()}")
    _write_image(path, np.random.default_rng(2), fmt)
    with open(path, "rb") as f:
        stored, why = image_folder.decode_or_none(f.read())
    assert why == ""
    if isinstance(stored, bytes):  # kept as it is: the reader's decoder must give one RGB frame
        stored = tf.image.decode_image(stored, channels=3).numpy()
    assert stored.ndim == 3 and stored.shape[-1] == 3


def test_truncated_png_is_reported():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buffer, format="PNG")
    stored, why = image_folder.decode_or_none(buffer.getvalue()[:60])
    assert stored is None and why and "\n" not in why


def _expect_config_error(config, workdir, message: str) -> None:
    with pytest.raises(ValueError) as error:
        validate_config(config)
    assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="config.image_folder"):
        loop.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_folder_config_errors_name_the_field(tiny_config, pets, tmp_path):
    config = _folder_config(tiny_config, str(tmp_path / "missing"), str(tmp_path / "tfds"))
    _expect_config_error(config, tmp_path / "w1", f"config.image_folder='{tmp_path / 'missing'}' is not a folder")
    config.image_folder = ""
    _expect_config_error(config, tmp_path / "w2", "config.image_folder='' must be the root of split/class/image")
    config.dataset, config.image_folder = "sklearn_digits", pets
    _expect_config_error(config, tmp_path / "w3", "is set but config.dataset='sklearn_digits'")


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"train/a.jpg": b""}, "holds no images in split/class/ folders"),
        ({"train-set/cat/a.jpg": b""}, "has a split folder 'train-set': rename it"),
    ],
)
def test_bad_layout_names_the_folder(layout, message, tmp_path):
    root = tmp_path / "root"
    for relpath, data in layout.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(data)
    with pytest.raises(ValueError) as error:
        image_folder.scan(str(root))
    assert str(error.value).startswith(f"config.image_folder='{root}'") and message in str(error.value)


def test_predict_names_the_folder_classes(tiny_config, pets, tmp_path):
    from alexnet_jax.runs import run_stats

    config = _folder_config(tiny_config, pets, str(tmp_path / "tfds"))
    assert run_stats.class_names(config, None) == ("cat", "dog")  # a workdir from before data_stats.npz
    assert not (tmp_path / "tfds").exists()  # read from the folder names: nothing prepared


def test_a_split_with_no_readable_file_stops_before_the_workdir(tiny_config, tmp_path):
    root = tmp_path / "root"
    rng = np.random.default_rng(3)
    for i in range(8):
        (root / "train" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        _write_image(str(root / "train" / f"c{i % 2}" / f"{i}.png"), rng, "PNG")
    (root / "validation" / "c0").mkdir(parents=True)
    (root / "validation" / "c0" / "x.jpg").write_bytes(b"garbage")
    config = _folder_config(tiny_config, str(root), str(tmp_path / "tfds"))
    workdir = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        loop.train_and_evaluate(config, str(workdir))
    assert str(error.value) == (
        f"config.image_folder='{root}': none of the 1 files of split 'validation' could be decoded "
        f"(e.g. validation/c0/x.jpg): replace them or remove the split folder"
    )
    assert not workdir.exists()
