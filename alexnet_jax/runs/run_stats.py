"""The run's own data statistics: `<workdir>/data_stats.npz`, beside config.json.

The first start writes the statistics the run trains with (the mean it
subtracts, the mean image or per-channel mean; the RGB PCA's eigenvectors
and square-rooted eigenvalues), where they came from (`source`: computed
from which split and cache file, or published), and the dataset's class
names. Every later reader of the workdir takes them from here: a restart,
evaluate, predict, retrieval and ensembles. The data_dir's statistics file
(data_stats.py) is only where a first start finds them: it may be
recomputed, replaced or missing later without changing what the run means,
and `predict` needs no dataset at all.

A workdir from before this file (checkpoints, no file) gets its statistics
as before, from the data, with one warning, and they are saved into it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from alexnet_jax import errors
from alexnet_jax.data import data_stats, image_folder, pipeline
from alexnet_jax.data.augment import DataStats, published_stats
from alexnet_jax.files import paths

FILE = "data_stats.npz"


@dataclasses.dataclass(frozen=True)
class RunStats:
    """What a run knows of its data without the data."""

    stats: DataStats
    source: dict[str, Any]  # {"data_stats": "computed", "split": ..., "file": ...} or {"data_stats": "published", ...}
    class_names: tuple[str, ...]  # the label names in class-id order; () if unknown
    saved: bool = False  # read from (or written to) the workdir's file


def path(workdir: str | os.PathLike) -> epath.Path:
    return paths.as_path(workdir) / FILE


def load(workdir: str | os.PathLike) -> RunStats | None:
    """The workdir's statistics, or None for a workdir without the file."""
    file = path(workdir)
    try:
        arrays = paths.read_npz(file)
    except (FileNotFoundError, NotADirectoryError):  # no such file, or no such workdir (said by check_writable)
        return None
    except (OSError, ValueError, KeyError) as error:
        raise errors.RunError(f"{file} cannot be read ({error}): restore it, or delete it to recompute it") from None
    stats = DataStats(
        mean=jnp.asarray(arrays["mean"]),
        eigvecs=jnp.asarray(arrays["eigvecs"]),
        sqrt_eigvals=jnp.asarray(arrays["sqrt_eigvals"]),
    )
    names = tuple(str(name) for name in arrays["class_names"])
    return RunStats(stats, json.loads(str(arrays["source"])), names, saved=True)


def save(workdir: str | os.PathLike, run: RunStats) -> None:
    """Writes `run` into the workdir (write-then-rename: a reader sees the
    whole file or none), unless it came from there."""
    if run.saved:
        return
    file = path(workdir)
    tmp = file.with_name(f"{file.name}.tmp-{socket.gethostname()}-{os.getpid()}.npz")
    paths.write_npz(
        tmp,
        mean=np.asarray(run.stats.mean, np.float32),
        eigvecs=np.asarray(run.stats.eigvecs, np.float32),
        sqrt_eigvals=np.asarray(run.stats.sqrt_eigvals, np.float32),
        source=np.asarray(json.dumps(run.source)),
        class_names=np.asarray(run.class_names, dtype=str),
    )
    tmp.replace(file)
    logging.info("The run's data statistics (%s) saved in %s", describe(run.source), file)


def describe(source: dict[str, Any]) -> str:
    if source.get("data_stats") == "published":
        return "published"
    return f"computed from {source.get('dataset')} {source.get('split')!r} at {source.get('resize_size')}px"


def class_names(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder | None) -> tuple[str, ...]:
    """The dataset's label names (ImageNet: WordNet ids such as n01440764):
    the prepared `builder`'s, else what tfds (or the image folder's class
    folders) says without preparing anything; () if neither can say."""
    if builder is not None:
        return tuple(builder.info.features["label"].names)
    try:
        if config.dataset == image_folder.DATASET:
            return tuple(image_folder.scan(config.image_folder).classes)
        return tuple(tfds.builder(config.dataset, data_dir=config.data_dir or None).info.features["label"].names)
    except Exception:  # synthetic data, an unregistered dataset, a folder gone: names unknown
        return ()


def from_data(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder | None) -> RunStats:
    """The statistics `config` asks for, from the data as a first start
    takes them (data_stats.load_or_compute; `builder` None: synthetic data,
    the published ones), not saved yet."""
    names = class_names(config, builder) if builder is not None else ()
    if builder is None or config.data_stats == "published":
        source = {"data_stats": "published", "mean_rgb": [float(v) for v in config.mean_rgb]}
        return RunStats(published_stats(config.mean_rgb), source, names)
    stats = data_stats.load_or_compute(config, builder)
    source = {
        "data_stats": "computed",
        "dataset": config.dataset,
        "split": config.train_split,
        "resize_size": config.resize_size,
        "cache_format": config.cache_format,
        "mean_image": bool(config.mean_image),
        "file": data_stats.cache_path(config, builder),
    }
    return RunStats(stats, source, names)


def _check(config: ml_collections.ConfigDict, workdir: str | os.PathLike, run: RunStats) -> RunStats:
    """One-line ValueError if the file's mean cannot be this run's (another run's file copied in)."""
    per_pixel = config.data_stats == "computed" and config.mean_image
    expected = (config.resize_size, config.resize_size, 3) if per_pixel else (3,)
    if tuple(run.stats.mean.shape) != expected:
        raise errors.RunError(
            f"{path(workdir)} holds a mean of shape {tuple(run.stats.mean.shape)} but this run "
            f"(config.data_stats={config.data_stats!r}, mean_image={config.mean_image}, "
            f"resize_size={config.resize_size}) subtracts one of shape {expected}: it is another run's file; "
            f"delete it to take the statistics from the data again"
        )
    return run


def for_training(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, builder: tfds.core.DatasetBuilder | None
) -> RunStats:
    """A restart's own statistics (whatever the data_dir holds now); at the
    first start those of the data, to be `save`d once config.json is written."""
    saved = load(workdir)
    if saved is not None:
        return saved  # checked by `keep`, after config.json's own checks
    if config.data_stats != "published" and (paths.as_path(workdir) / "checkpoints").is_dir():
        _warn_missing(workdir, config)
    return from_data(config, builder)


def keep(config: ml_collections.ConfigDict, workdir: str | os.PathLike, run: RunStats, is_writer: bool) -> None:
    """After config.json is checked or written: a restart's statistics are
    checked against its config; a first start's are saved (`is_writer`)."""
    if run.saved:
        _check(config, workdir, run)
    elif is_writer:
        save(workdir, run)


def for_reading(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    builder: tfds.core.DatasetBuilder | None = None,
) -> RunStats:
    """The statistics evaluate, predict, retrieval and ensembles read
    `workdir` with: its own file; for a workdir from before it, those of
    the data (the training split; `builder`, else prepared here), with one
    warning, then saved into it (process 0)."""
    saved = load(workdir)
    if saved is not None:
        return _check(config, workdir, saved)
    if config.data_stats != "published":
        _warn_missing(workdir, config)
        builder = builder or pipeline.get_builder(config)
    run = from_data(config, builder)
    if not run.class_names:
        run = dataclasses.replace(run, class_names=class_names(config, builder))
    if jax.process_index() == 0:
        try:
            save(workdir, run)
        except Exception as error:  # a read-only workdir is still readable: use them unsaved
            logging.warning("could not save the data statistics into %s (%s)", workdir, error)
    return run


def _warn_missing(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
    logging.warning(
        "%s has no %s (a run from before the run kept its statistics): taking them from %s's %r split "
        "in the data_dir as before, and saving them into the workdir",
        workdir,
        FILE,
        config.dataset,
        config.train_split,
    )
