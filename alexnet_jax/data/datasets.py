"""Getting a prepared tfds builder: preparation once for every process,
ImageNet's manual tars, the registered splits and class count checked before
any download, and one line (not minutes of retries) when a download cannot
happen. input_pipeline.py re-exports `get_builder` and the error, its users' entry."""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import sys
import urllib.error
from collections.abc import Iterator

import jax
import ml_collections
import requests
import tensorflow_datasets as tfds
from etils import epath

from alexnet_jax import errors
from alexnet_jax.data import (
    digits,  # noqa: F401  (registers `sklearn_digits`)
    image_folder,
)
from alexnet_jax.files import folder_lock
from alexnet_jax.parallel import processes

IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


class DatasetUnavailableError(errors.Error, RuntimeError):
    """The dataset is neither prepared nor preparable here; the message says why."""


def manual_dir(config: ml_collections.ConfigDict) -> str:
    """Where the ImageNet tars go: config.manual_dir, else <data_dir>/downloads/manual,
    data_dir being tfds's own default where config.data_dir is empty
    ($TFDS_DATA_DIR if set, else ~/tensorflow_datasets)."""
    data_dir = config.data_dir or tfds.core.constants.get_default_data_dir()
    if config.manual_dir:
        return config.manual_dir
    return os.fspath(epath.Path(data_dir).expanduser() / "downloads" / "manual")  # local or a URI (gs://...)


def rerun_command() -> str:
    """The command this process was started with, to repeat in a message
    (the user's own workdir and overrides, or a sweep variant's)."""
    if sys.argv[0].endswith(os.path.join("alexnet_jax", "main.py")):
        return shlex.join(["python", "-m", "alexnet_jax.main", *sys.argv[1:]])
    return "the same command"


def get_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The prepared tfds builder of `config.dataset`, preparing it if needed:
    process 0 prepares, the others wait and open what it prepared (`_prepare_builder`)."""
    if config.dataset == image_folder.DATASET:
        open_prepared = functools.partial(image_folder.get_builder, config)
    else:
        open_prepared = functools.partial(_open_prepared, config)
    return processes.prepare_once(
        f"dataset {config.dataset}",
        functools.partial(_prepare_builder, config),
        open_prepared,
        is_preparer=jax.process_index() == 0,
        error_type=DatasetUnavailableError,
    )


def _open_prepared(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The builder another process has prepared."""
    builder = tfds.builder(config.dataset, data_dir=config.data_dir or None)
    if not builder.is_prepared():
        raise DatasetUnavailableError(
            f"process 0 prepared {config.dataset} but this process does not find it in {builder.data_dir}: "
            f"every process needs the same data_dir (a shared file system), or prepare it on every host first"
        )
    return builder


def _prepare_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The prepared tfds builder of `config.dataset`, preparing it if needed.

    imagenet2012 cannot be downloaded: its tar files must be placed in the
    manual directory first, and a missing one raises DatasetUnavailableError
    naming the file, the directory and the command to run. `config.dataset =
    "image_folder"` reads the user's `config.image_folder` (image_folder.py).
    """
    if config.dataset == image_folder.DATASET:
        return image_folder.get_builder(config)
    builder = tfds.builder(config.dataset, data_dir=config.data_dir or None)
    if builder.is_prepared():
        return builder
    download_config = None
    if config.dataset.split(":")[0] == "imagenet2012":
        folder = manual_dir(config)
        missing = [name for name in IMAGENET_TARS if not (epath.Path(folder).expanduser() / name).exists()]
        if missing:
            raise DatasetUnavailableError(
                f"imagenet2012 is not prepared and {', '.join(missing)} not found in {folder}: "
                f"download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
                f"https://image-net.org into that folder (or pass --config.manual_dir=DIR), then rerun "
                f"`{rerun_command()}` "
                f"(the first run prepares the data through tfds, several hours)"
            )
        download_config = tfds.download.DownloadConfig(manual_dir=folder)
    check_splits_and_classes(config, builder)  # what tfds knows before any download
    lock_file = builder.data_dir_root / folder_lock.PREPARE_LOCK
    try:
        with folder_lock.preparing(lock_file, f"dataset {config.dataset}"), _few_download_retries():
            builder = tfds.builder(config.dataset, data_dir=config.data_dir or None)  # another job may have prepared it
            if not builder.is_prepared():
                builder.download_and_prepare(download_config=download_config)
    except (requests.exceptions.RequestException, urllib.error.URLError) as error:
        raise DatasetUnavailableError(
            f"{config.dataset} is not prepared in {builder.data_dir} and could not be downloaded "
            f"({type(error).__name__}): prepare it on a machine with internet access (the same command there, "
            f"or `tfds build {config.dataset} --data_dir DIR`) and copy that data_dir here "
            f"(--config.data_dir=DIR), or use your own images with --config.dataset=image_folder"
        ) from None
    return builder


def check_splits_and_classes(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> None:
    """The config's splits and class count against the dataset's. Before a
    download tfds knows the class count (registered with the features) and,
    for some datasets, the split names: what it does not know yet is checked
    once the data is prepared."""
    splits = sorted(builder.info.splits.keys())
    for field in ("train_split", "eval_split"):
        if splits and config[field] not in splits:
            raise errors.ConfigError(
                f"config.{field}={config[field]!r} is not a split of {config.dataset}: use one of {splits}"
            )
    classes = builder.info.features["label"].num_classes
    if config.model.num_classes != classes:
        raise errors.ConfigError(
            f"config.model.num_classes={config.model.num_classes} but {config.dataset} has {classes} classes"
        )


@contextlib.contextmanager
def _few_download_retries(retries: int = 2) -> Iterator[None]:
    """tfds retries a failed download 10 times with backoff (minutes of
    `Retrying ...` lines on a machine without internet access); a couple of
    retries tell a passing fault from no route at all within seconds."""
    from tensorflow_datasets.core.download import downloader

    saved, downloader.MAX_RETRIES = downloader.MAX_RETRIES, retries
    try:
        yield
    finally:
        downloader.MAX_RETRIES = saved
