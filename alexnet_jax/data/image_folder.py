"""A folder of the user's images as a tfds dataset: `root/split/class/*`.

    config.dataset = "image_folder"
    config.image_folder = "/data/pets"    # /data/pets/train/cat/1.jpg, /data/pets/validation/dog/7.png, ...

Every sub-folder of the root is a split, every sub-folder of a split is a
class (label names: the union over splits, sorted), every other file in a
class folder an image of any type TensorFlow or PIL can decode. Hidden files
and folders (".name"), and files directly in the root or a split folder, are
ignored.

The folder is prepared once into the tfds data_dir as an ordinary tfds
dataset (`UserImageFolder`), so splits, per-process sub-splits, file
shuffling and `builder.info` work as for imagenet2012. Preparing decodes
every file once: a file that cannot be read or decoded is excluded, and its
name and the reason are kept in the prepared dataset's metadata, so every
run warns about it (with the count) without decoding anything again. The
prepared copy is keyed by the folder's path and listing (names, sizes,
modification times): changing the folder prepares a fresh copy on the next
run. The folder must be local (it is listed and fingerprinted with the local
file system); the data_dir the copy goes to may be a URI (gs://...).

Why not `tfds.folder_dataset.ImageFolder`: it re-reads the original files
every epoch (a corrupt one stops the run where it is met), accepts no
sub-splits (`train[0%:50%]`, which per-process reading needs), shuffles
files without a seed (a resumed run would not replay the same stream) and
reads only .jpg/.jpeg/.png.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import re
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from alexnet_jax import errors
from alexnet_jax.files import folder_lock

DATASET = "image_folder"  # the value of config.dataset that selects this source
_LISTED_BAD_FILES = 20  # names spelled out in the warning; the rest are in metadata.json
_SPLIT_NAME = re.compile(r"^\w+$")  # what tfds accepts as a split name


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
    """One folder's listing: `files[split]` is a tuple of (path relative to the root, class)."""

    root_dir: str = ""
    classes: tuple[str, ...] = ()
    files: dict[str, tuple[tuple[str, str], ...]] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:  # tfds logs the config: not the whole listing
        counts = ", ".join(f"{split}: {len(examples)}" for split, examples in self.files.items())
        return f"FolderConfig({self.name!r}, {self.root_dir!r}, {len(self.classes)} classes, files {{{counts}}})"


def _visible(entries: Iterator[os.DirEntry], want_dirs: bool) -> list[os.DirEntry]:
    """Non-hidden folders (want_dirs) or regular files, sorted by name."""
    kept = [e for e in entries if not e.name.startswith(".") and (e.is_dir() if want_dirs else e.is_file())]
    return sorted(kept, key=lambda e: e.name)


def scan(root_dir: str) -> FolderConfig:
    """Lists `root/split/class/*` and fingerprints the listing (names, sizes,
    modification times). Raises ValueError naming config.image_folder if the
    layout is not split/class/files."""
    root_dir = os.path.abspath(os.path.expanduser(root_dir))
    if not os.path.isdir(root_dir):
        raise errors.ConfigError(
            f"config.image_folder={root_dir!r} is not a folder: give the root of split/class/image files"
        )
    digest = hashlib.sha256(root_dir.encode())
    files: dict[str, tuple[tuple[str, str], ...]] = {}
    classes: set[str] = set()
    with os.scandir(root_dir) as splits:
        split_dirs = _visible(splits, want_dirs=True)
    for split in split_dirs:
        if not _SPLIT_NAME.match(split.name):
            raise errors.ConfigError(
                f"config.image_folder={root_dir!r} has a split folder {split.name!r}: "
                f"rename it to letters, digits and underscores (e.g. 'train', 'validation')"
            )
        examples = []
        with os.scandir(split.path) as class_entries:
            class_dirs = _visible(class_entries, want_dirs=True)
        for class_dir in class_dirs:
            classes.add(class_dir.name)
            with os.scandir(class_dir.path) as images:
                for image in _visible(images, want_dirs=False):
                    relpath = f"{split.name}/{class_dir.name}/{image.name}"
                    stat = image.stat()
                    digest.update(f"{relpath}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
                    examples.append((relpath, class_dir.name))
        if examples:
            files[split.name] = tuple(examples)
    if not files:
        raise errors.ConfigError(
            f"config.image_folder={root_dir!r} holds no images in split/class/ folders: "
            f"lay it out as {root_dir}/train/<class>/<image>, {root_dir}/validation/<class>/<image>"
        )
    slug = re.sub(r"\W", "_", os.path.basename(root_dir)) or "root"
    name = f"{slug}_{digest.hexdigest()[:12]}"
    return FolderConfig(name=name, root_dir=root_dir, classes=tuple(sorted(classes)), files=files)


def decode_or_none(data: bytes) -> tuple[bytes | np.ndarray | None, str]:
    """What to store for one file's bytes, or (None, why it is unusable).

    Bytes that `tf.image.decode_image` (the reader's decoder) turns into one
    RGB frame are stored as they are; anything else PIL can open (TIFF,
    WebP, an animated GIF's first frame, ...) is stored decoded, re-encoded
    as PNG by tfds.
    """
    try:
        if tf.image.decode_image(data, channels=3, expand_animations=True).shape.rank == 3:
            return data, ""
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        pass
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB")), ""
    except UnidentifiedImageError:
        return None, "not an image type TensorFlow or PIL can decode"
    except Exception as error:  # noqa: BLE001  any decoder failure means "exclude and report"
        return None, (str(error).splitlines() or [type(error).__name__])[0]


class UserImageFolder(tfds.core.GeneratorBasedBuilder):
    """The images of one `root/split/class/*` folder (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Unreadable files are excluded and listed in the metadata."}

    def _info(self) -> tfds.core.DatasetInfo:
        config: FolderConfig = self.builder_config
        return self.dataset_info_from_configs(
            description=f"Images of {config.root_dir} (split/class/image).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=list(config.classes)),
                    "file_name": tfds.features.Text(),  # relative to the root, e.g. "train/cat/1.jpg"
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(root_dir=config.root_dir, bad_files=[]),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # The images are already here.
        return {split: self._generate_examples(examples) for split, examples in self.builder_config.files.items()}

    def _generate_examples(self, examples: tuple[tuple[str, str], ...]):
        bad_files = self.info.metadata["bad_files"]  # written with the dataset info after generation
        good = 0
        for relpath, label in examples:
            try:
                with open(os.path.join(self.builder_config.root_dir, relpath), "rb") as f:
                    image, why = decode_or_none(f.read())
            except OSError as error:
                image, why = None, error.strerror or str(error)
            if image is None:
                bad_files.append([relpath, why])
                continue
            good += 1
            yield relpath, {"image": image, "label": label, "file_name": relpath}
        if not good:  # else tfds stops with "No examples were yielded", naming no file
            split = examples[0][0].split("/")[0]
            names = ", ".join(relpath for relpath, _ in examples[:3])
            raise errors.ConfigError(
                f"config.image_folder={self.builder_config.root_dir!r}: none of the {len(examples)} files of "
                f"split {split!r} could be decoded (e.g. {names}): replace them or remove the split folder"
            )


def bad_files(builder: tfds.core.DatasetBuilder) -> list[tuple[str, str]]:
    """(path relative to the root, reason) of every file excluded when preparing."""
    return [tuple(entry) for entry in builder.info.metadata["bad_files"]]


def _warn_bad_files(builder: tfds.core.DatasetBuilder) -> None:
    bad = bad_files(builder)
    if not bad:
        return
    listed = "; ".join(f"{path} ({why})" for path, why in bad[:_LISTED_BAD_FILES])
    more = f"; and {len(bad) - _LISTED_BAD_FILES} more" if len(bad) > _LISTED_BAD_FILES else ""
    logging.warning(
        "%d unreadable image file(s) in %s were excluded (all listed in %s): %s%s",
        len(bad),
        builder.builder_config.root_dir,
        epath.Path(builder.data_dir) / "metadata.json",
        listed,
        more,
    )


def get_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The prepared builder of `config.image_folder`, preparing it (decoding
    every file once) if the folder is new or has changed; warns about the
    excluded files on every call."""
    folder_config = scan(config.image_folder)
    data_dir = config.data_dir or None
    builder = UserImageFolder(config=folder_config, data_dir=data_dir)
    if not builder.is_prepared():
        lock_file = builder.data_dir_root / folder_lock.PREPARE_LOCK
        with folder_lock.preparing(lock_file, f"image folder {config.image_folder}"):
            builder = UserImageFolder(config=folder_config, data_dir=data_dir)  # another job may have prepared it
            if not builder.is_prepared():
                logging.info("Preparing %s once, into %s", folder_config.root_dir, builder.data_dir)
                builder.download_and_prepare()
    _warn_bad_files(builder)
    return builder
