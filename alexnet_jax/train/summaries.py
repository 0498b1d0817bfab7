"""What a run writes to TensorBoard besides the scalars, for inspection.

- at the start: the config as text and as hparams (the HParams dashboard
  compares a sweep's variants, each row named by its run: run_name), and
  the parameter count;
- at the first and last steps and every config.inspect_every_steps (0:
  never): the first-layer kernels as one
  image grid per tower (the paper's Figure 3), a few augmented training
  inputs as the model saw them, per-layer weight and gradient norms
  (scalars) and histograms.

The histograms are bucketed here, in blocks (`histogram_buckets`), and
written as TensorBoard's histogram tensors: tf.summary.histogram (clu's
write_histograms) builds a values x buckets one-hot float64 matrix, 9 GB
for fc6's kernel alone (the paper config's peak went from 15.3 to 4.4 GB
without it: BENCHMARKS.md, "Memory").
"""

from __future__ import annotations

import math
import os
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
from clu import metric_writers

from alexnet_jax.files import paths
from alexnet_jax.train.inspection import Inspection

_KERNEL_ZOOM = 4  # 11x11 kernels are too small to see at 1:1
HISTOGRAM_BUCKETS = 30  # TensorBoard's default (tensorboard.plugins.histogram.summary_v2)
_BUCKET_BLOCK = 1 << 20  # values bucketed at a time: a few MB of temporaries, whatever the array


class _ConsoleWriter(metric_writers.LoggingWriter):
    """Logs the run's own scalars (loss, errors, rates); the per-layer norms,
    histograms and the config text go to TensorBoard only, not the console."""

    def write_scalars(self, step: int, scalars) -> None:
        own = {k: v for k, v in scalars.items() if "/" not in k}
        if own:
            super().write_scalars(step, own)

    def write_histograms(self, step: int, arrays, num_buckets=None) -> None:
        pass

    def write_texts(self, step: int, texts) -> None:
        pass


def run_name(workdir: str | os.PathLike) -> str:
    """`ablations/use_lrn=False,seed=0`: the workdir's name after its
    parent's (a sweep's folder, whose variants are named by their settings)."""
    path = paths.as_path(workdir)
    return "/".join(part.name for part in (path.parent, path) if part.name)


class _SummaryWriter(metric_writers.SummaryWriter):
    """clu's TensorBoard writer, its hparams written with the run's name as
    their trial id: the HParams dashboard names each row by it (clu leaves
    the id out, and TensorBoard then shows a hash of the values)."""

    def __init__(self, logdir: str, trial_id: str):
        super().__init__(logdir)
        self._trial_id = trial_id

    def write_hparams(self, hparams) -> None:
        from tensorboard.plugins.hparams import api as hparams_api

        with self._summary_writer.as_default():
            hparams_api.hparams(dict(hparams), trial_id=self._trial_id)

    def write_histograms(self, step: int, arrays, num_buckets=None) -> None:
        """As clu's, but each array's buckets counted by `histogram_buckets`
        (not tf.summary.histogram's one-hot matrix) and written as the
        histogram plugin's [buckets, 3] tensor, which TensorBoard reads alike."""
        import tensorflow as tf
        from tensorboard.plugins.histogram import metadata

        with self._summary_writer.as_default():
            for key, value in arrays.items():
                count = (num_buckets or {}).get(key) or HISTOGRAM_BUCKETS
                tensor = tf.constant(histogram_buckets(value, count), tf.float64)
                tf.summary.write(key, tensor, step=step, metadata=metadata.create_summary_metadata(None, None))


def create_writer(workdir: str | os.PathLike, just_logging: bool) -> metric_writers.MetricWriter:
    """clu's default pair (console + TensorBoard event files in `workdir`,
    local or a URI: TensorFlow writes them through tf.io.gfile), asynchronous,
    with a console that leaves the inspection to TensorBoard and hparams
    named by the run.
    `just_logging` (processes other than 0): console only."""
    logdir = os.fspath(paths.as_path(workdir))  # TensorFlow takes a string
    writers = [_ConsoleWriter()] + ([] if just_logging else [_SummaryWriter(logdir, run_name(workdir))])
    return metric_writers.AsyncMultiWriter(writers)


def histogram_buckets(values: Any, bucket_count: int = HISTOGRAM_BUCKETS) -> np.ndarray:
    """TensorBoard's histogram of `values` (any shape): rows [left edge, right
    edge, count], `bucket_count` equal buckets from the minimum to the
    maximum, the last one closed, each value in bucket floor((v - min) / width)
    as tf.summary.histogram places it; all in one bucket (the last) when the
    values are equal, all zeros when there are none. Counted a block at a
    time in float64. Non-finite values are left out (the op would give NaN
    edges)."""
    data = np.asarray(values).reshape(-1)
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if not (math.isfinite(low) and math.isfinite(high)):
        data = data[np.isfinite(data)]
        low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if data.size == 0 or bucket_count == 0:
        return np.zeros((bucket_count, 3))
    if low == high:
        counts = np.zeros(bucket_count)
        counts[-1] = data.size
        return np.stack([np.full(bucket_count, low), np.full(bucket_count, low), counts], axis=1)
    width = (high - low) / bucket_count
    counts = np.zeros(bucket_count, np.int64)
    for start in range(0, data.size, _BUCKET_BLOCK):
        block = data[start : start + _BUCKET_BLOCK].astype(np.float64)
        index = np.minimum(np.floor((block - low) / width).astype(np.int64), bucket_count - 1)
        counts += np.bincount(index, minlength=bucket_count)
    edges = np.linspace(low, high, bucket_count + 1)
    edges[-1] = high  # exactly the maximum, as the op makes it
    return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)


def flatten(tree: Any, sep: str = ".") -> dict[str, Any]:
    """A nested dict (or ConfigDict-as-dict) as {"a.b.c": leaf}."""
    return flax.traverse_util.flatten_dict(dict(tree), sep=sep)


def _hparam(value: Any) -> bool | int | float | str:
    # The HParams plugin takes bool, number or string; tuples become strings.
    return value if isinstance(value, bool | int | float | str) else str(value)


def write_run_info(writer: metric_writers.MetricWriter, config: ml_collections.ConfigDict, num_params: int) -> None:
    """Config (text and hparams) and parameter count, at step 0."""
    fields = flatten(config.to_dict())
    writer.write_hparams({k: _hparam(v) for k, v in fields.items()})
    # One `field = value` line per field, as `--config.field=value` takes it;
    # indented into a code block because TensorBoard renders text as Markdown.
    writer.write_texts(0, {"config": "\n".join(f"    {k} = {v!r}" for k, v in sorted(fields.items()))})
    writer.write_scalars(0, {"num_params": num_params})


def tile(images_nhwc: np.ndarray, cols: int, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Images laid out row by row on a `cols`-wide grid with `pad` pixels between them."""
    n, height, width, channels = images_nhwc.shape
    rows = math.ceil(n / cols)
    grid = np.full(
        (rows * (height + pad) + pad, cols * (width + pad) + pad, channels), pad_value, dtype=images_nhwc.dtype
    )
    for i, image in enumerate(images_nhwc):
        top, left = pad + (i // cols) * (height + pad), pad + (i % cols) * (width + pad)
        grid[top : top + height, left : left + width] = image
    return grid


def kernel_grids(kernel_hwio: np.ndarray, towers: int, cols: int = 8) -> list[np.ndarray]:
    """conv1's filters as one uint8 RGB grid per tower (Figure 3 of the paper).

    Output channels are laid out tower after tower. Each filter is scaled by
    its own largest |weight| around mid-grey, so colour (or its absence) and
    the pattern show whatever the filter's magnitude.
    """
    filters = np.moveaxis(np.asarray(kernel_hwio, np.float32), -1, 0)  # (out, h, w, in)
    scale = np.abs(filters).max(axis=(1, 2, 3), keepdims=True)
    filters = 0.5 + 0.5 * filters / np.where(scale > 0, scale, 1.0)
    filters = filters.repeat(_KERNEL_ZOOM, axis=1).repeat(_KERNEL_ZOOM, axis=2)
    grids = [tile(part, min(cols, len(part))) for part in np.split(filters, towers)]
    return [np.round(255 * grid).astype(np.uint8) for grid in grids]


def to_uint8(images_nhwc: np.ndarray) -> np.ndarray:
    """Float pixels (0..255, colour noise may push them past) as displayable uint8 RGB."""
    return np.clip(np.round(np.asarray(images_nhwc, np.float32)), 0, 255).astype(np.uint8)


def _host_arrays(tree: Any) -> dict[str, np.ndarray]:
    return {path: np.asarray(x) for path, x in flatten(jax.device_get(tree), "/").items()}


def write_inspection(
    writer: metric_writers.MetricWriter, step: int, inspection: Inspection, config: ml_collections.ConfigDict
) -> None:
    """Kernel grids, inputs, norms and histograms of the weights going into `step`."""
    if jax.process_index() > 0:  # only process 0 writes; skip the host copies too
        return
    kernels = np.asarray(jax.device_get(inspection.params["conv1"]["kernel"]))
    images = {f"conv1_kernels/tower_{i}": grid for i, grid in enumerate(kernel_grids(kernels, config.model.towers))}
    images["train_inputs"] = to_uint8(jax.device_get(inspection.images))
    writer.write_images(step, images)

    norms = {f"weight_norm/{k}": float(v) for k, v in jax.device_get(inspection.param_norms).items()}
    norms.update({f"grad_norm/{k}": float(v) for k, v in jax.device_get(inspection.grad_norms).items()})
    writer.write_scalars(step, norms)

    histograms = {f"weights/{k}": v for k, v in _host_arrays(inspection.params).items()}
    histograms.update({f"grads/{k}": v for k, v in _host_arrays(inspection.grads).items()})
    writer.write_histograms(step, histograms)
