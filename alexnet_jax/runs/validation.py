"""`validate_config`: every field checked before anything touches the disk.

A wrong field raises one `ValueError` whose message names the field, its
value and what to use instead, e.g.
`config.batch_size=100 must be divisible by the 8 data-parallel devices`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import tensorflow_datasets as tfds

from alexnet_jax import errors
from alexnet_jax.data import (
    data_cache,
    digits,  # noqa: F401  (registers `sklearn_digits` for the registry check)
    image_folder,
    synthetic,
)
from alexnet_jax.files import paths
from alexnet_jax.model import network
from alexnet_jax.parallel import sharding
from alexnet_jax.platform import machine_defaults
from alexnet_jax.runs import defaults


def _fail(field: str, value: Any, fix: str) -> None:
    raise errors.ConfigError(f"config.{field}={value!r} {fix}")


def _positive_int(config: ml_collections.ConfigDict, field: str) -> None:
    value = config[field]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        _fail(field, value, "must be a positive integer")


def _one_of(value: Any, field: str, allowed: tuple) -> None:
    if value not in allowed:
        _fail(field, value, f"must be one of {allowed}")


def _validate_mesh(config: ml_collections.ConfigDict) -> int:
    """Checks the mesh against the devices; returns the data-parallel size."""
    spec = tuple(config.mesh)
    devices = jax.device_count()
    if len(spec) != 2 or not all(isinstance(n, int) for n in spec):
        _fail("mesh", spec, "must be two integers (data, model), e.g. (-1, 1)")
    data, model = spec
    if model < 1 or (data < 1 and data != -1):
        _fail("mesh", spec, "must have model >= 1 and data >= 1 or -1 (all remaining devices)")
    if devices % model:
        _fail("mesh", spec, f"has a model axis of {model}, which does not divide the {devices} devices")
    data, model = sharding.mesh_shape(spec, devices)
    if data * model > devices:
        _fail("mesh", spec, f"needs {data * model} devices but there are {devices}: use (-1, {model})")
    if data * model < devices and jax.process_count() > 1:
        _fail("mesh", spec, f"covers {data * model} of {devices} devices; with several processes use (-1, {model})")
    return data


def _validate_model_parallel(config: ml_collections.ConfigDict) -> None:
    """The scheme must exist, and "towers" needs one tower per device of a model group."""
    _one_of(config.model_parallel, "model_parallel", tuple(sharding.SCHEMES))
    model = sharding.mesh_shape(tuple(config.mesh), jax.device_count())[1]
    towers = config.model.towers
    if config.model_parallel == "towers" and model not in (1, towers):
        _fail(
            "mesh",
            tuple(config.mesh),
            f"puts {model} devices on model.towers={towers}: use a model axis of 1 or {towers} "
            f"(one tower per device), or model_parallel='dense'",
        )


def _validate_model(model: ml_collections.ConfigDict) -> None:
    _one_of(model.activation, "model.activation", ("relu", "tanh"))
    _one_of(model.towers, "model.towers", (1, 2))
    _one_of(model.cross_tower, "model.cross_tower", (True, False))
    _one_of(model.extra_conv6, "model.extra_conv6", (True, False))
    filters = tuple(model.filters)
    if len(filters) != 5 or not all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in filters):
        _fail("model.filters", filters, "must be five positive filter counts (the paper's: (96, 256, 384, 384, 256))")
    _one_of(model.tower_impl, "model.tower_impl", ("split", "grouped"))
    _one_of(model.pool_window, "model.pool_window", (2, 3))
    _one_of(model.init_scheme, "model.init_scheme", ("as_trained", "printed"))
    _one_of(model.dtype, "model.dtype", ("float32", "bfloat16"))
    _one_of(model.conv1_impl, "model.conv1_impl", ("auto", "direct", "space_to_depth"))
    _one_of(model.conv_wgrad, "model.conv_wgrad", ("auto", "xla", "gemm"))
    _one_of(model.pool_impl, "model.pool_impl", ("auto", "xla", "taps"))
    _one_of(model.dropout_scaling, "model.dropout_scaling", ("test", "train"))
    if not isinstance(model.num_classes, int) or model.num_classes < 2:
        _fail("model.num_classes", model.num_classes, "must be an integer >= 2")
    if not model.width > 0:
        _fail("model.width", model.width, "must be > 0 (1.0 is the paper's width)")
    if not 0 <= model.dropout_rate < 1:
        _fail("model.dropout_rate", model.dropout_rate, "must be in [0, 1)")
    if model.lrn_n < 1 or model.lrn_n % 2 == 0:
        _fail("model.lrn_n", model.lrn_n, "must be a positive odd number (the paper's is 5)")
    # Longer strides than windows skip pixels and leave no input size that
    # survives three poolings: the paper's settings are 2 (3x3) and 2 (2x2).
    if not isinstance(model.pool_stride, int) or not 1 <= model.pool_stride <= model.pool_window:
        _fail("model.pool_stride", model.pool_stride, f"must be in 1..model.pool_window={model.pool_window} (paper: 2)")
    smallest = network.smallest_input_size(model.pool_window, model.pool_stride)
    if model.input_size < smallest:
        _fail(
            "model.input_size",
            model.input_size,
            f"is too small for conv1 (11x11/4) and three {model.pool_window}x{model.pool_window} "
            f"poolings: use at least {smallest}",
        )


def network_layers(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The configured network's layers with parameters, input to output, from
    its fields (network.layer_names: the model's own layer stack), without
    building it: what every field that names layers must choose from."""
    return network.layer_names(config.model.extra_conv6)


def _validate_optimizer(opt: ml_collections.ConfigDict, layers: tuple[str, ...]) -> None:
    _one_of(opt.schedule, "optimizer.schedule", defaults.SCHEDULES)
    if not opt.learning_rate > 0:
        _fail("optimizer.learning_rate", opt.learning_rate, "must be > 0 (the paper's is 0.01)")
    if not 0 <= opt.momentum < 1:
        _fail("optimizer.momentum", opt.momentum, "must be in [0, 1) (the paper's is 0.9)")
    if opt.weight_decay < 0:
        _fail("optimizer.weight_decay", opt.weight_decay, "must be >= 0 (the paper's is 5e-4)")
    if not 0 < opt.drop_factor <= 1:
        _fail("optimizer.drop_factor", opt.drop_factor, "must be in (0, 1] (the paper's is 0.1)")
    epochs = list(opt.drop_epochs)
    # A repeated epoch would make one drop, not two (the schedule keys steps).
    if any(e < 0 for e in epochs) or any(a >= b for a, b in zip(epochs, epochs[1:])):
        _fail("optimizer.drop_epochs", tuple(epochs), "must be strictly increasing, non-negative epochs")
    for change in opt.layer_lr_changes:
        if (
            not isinstance(change, tuple | list)
            or len(change) != 3
            or change[0] not in layers
            or not isinstance(change[1], int | float)
            or change[1] < 0
            or not isinstance(change[2], int | float)
            or change[2] < 0
        ):
            _fail(
                "optimizer.layer_lr_changes",
                tuple(opt.layer_lr_changes),
                f"must be (layer, epoch >= 0, multiplier >= 0) triples, layer one of this network's {layers}, "
                "e.g. (('conv1', 67, 0.1), ('conv1', 72, 0.0))",
            )
    if opt.plateau_patience < 1:
        _fail("optimizer.plateau_patience", opt.plateau_patience, "must be >= 1 evaluation")
    if opt.plateau_max_drops < 0:
        _fail("optimizer.plateau_max_drops", opt.plateau_max_drops, "must be >= 0")


def _validate_raw_cache_dir(config: ml_collections.ConfigDict) -> None:
    """A raw cache is read with os.pread, so its data_dir (config.data_dir, else
    tfds's default, TFDS_DATA_DIR) must be local or mounted: refused here, at
    every entry point, not when the first batch is read."""
    if config.cache_format != "raw" or config.dataset == synthetic.NAME:
        return
    data_dir = config.data_dir or tfds.core.constants.get_default_data_dir()
    if paths.is_remote(os.fspath(data_dir)):
        raise errors.ConfigError(data_cache.RAW_NEEDS_LOCAL.format(path=data_dir))


def _validate_dataset(config: ml_collections.ConfigDict) -> None:
    """The dataset must be a registered tfds name, or "image_folder" with an
    existing `config.image_folder` (a folder set for another dataset is an
    error, not silently ignored)."""
    name, folder = config.dataset, config.get("image_folder", "")
    if not isinstance(name, str) or not name:
        _fail("dataset", name, "must be a tfds dataset name, e.g. 'sklearn_digits'")
    if name.lower().startswith("synthetic") and name != synthetic.NAME:
        _fail("dataset", name, f"is not a dataset: use {synthetic.NAME!r} for benchmark data")
    if name == image_folder.DATASET:
        if not folder:
            _fail("image_folder", folder, "must be the root of split/class/image folders when dataset='image_folder'")
        if paths.is_remote(folder):  # config.data_dir, where the prepared copy goes, may be remote
            _fail("image_folder", folder, "must be a local folder (its files are listed and fingerprinted locally)")
        if not os.path.isdir(os.path.expanduser(folder)):
            _fail("image_folder", folder, "is not a folder: give the root of split/class/image folders")
        return
    if folder:
        _fail("image_folder", folder, f"is set but config.dataset={name!r}: set config.dataset='image_folder'")
    if name == synthetic.NAME:
        return
    try:  # Only the registry is read: nothing is downloaded or prepared here.
        dataset_name, _ = tfds.core.naming.parse_builder_name_kwargs(name)
        tfds.builder_cls(str(dataset_name))
    except (tfds.core.registered.DatasetNotFoundError, ValueError):
        _fail(
            "dataset",
            name,
            "is not a tfds dataset: use a name from tfds.list_builders() (e.g. 'imagenet2012', 'cifar10'), "
            "'sklearn_digits', or 'image_folder' with config.image_folder",
        )


def _validate_init(config: ml_collections.ConfigDict) -> None:
    """init_from must be a path (checked when used); init_reset and frozen name layers."""
    if not isinstance(config.init_from, str):
        _fail("init_from", config.init_from, "must be a workdir or a checkpoint step directory ('' = none)")
    here = network_layers(config)
    for field in ("init_reset", "frozen"):
        names = config[field]
        if isinstance(names, str) or not all(name in here for name in names):
            _fail(field, names, f"must be a tuple of layer names from {here}, e.g. ('fc8',)")
    if config.init_reset and not config.init_from:
        _fail("init_reset", tuple(config.init_reset), "needs config.init_from (the run whose other layers are taken)")
    if set(config.frozen) == set(here):
        _fail("frozen", tuple(config.frozen), "freezes every layer: nothing would train")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first wrong field; returns None if all is well."""
    _validate_dataset(config)
    _one_of(config.cache_format, "cache_format", data_cache.FORMATS)
    _validate_raw_cache_dir(config)
    for field in (
        "batch_size",
        "eval_batch_size",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "shuffle_buffer_size",
        "resize_size",
        "prefetch_batches",
    ):
        _positive_int(config, field)
    inspect = config.inspect_every_steps
    if not isinstance(inspect, int) or isinstance(inspect, bool) or inspect < 0:
        _fail("inspect_every_steps", inspect, "must be an integer >= 0 (0 = never inspect)")
    if config.num_train_steps <= 0 and not config.num_epochs > 0:
        _fail("num_epochs", config.num_epochs, "must be > 0 when num_train_steps <= 0")
    _one_of(config.data_stats, "data_stats", ("computed", "published"))
    _one_of(config.eval_views, "eval_views", ("center", "ten_view"))
    _positive_int(config, "crop_chunk")
    if not config.pca_noise_std >= 0:
        _fail("pca_noise_std", config.pca_noise_std, "must be >= 0 (the paper's is 0.1; 0 turns it off)")
    if not isinstance(config.pca_noise_end_epoch, int | float):
        _fail("pca_noise_end_epoch", config.pca_noise_end_epoch, "must be an epoch (run #145: 67; < 0 = never)")
    if len(tuple(config.mean_rgb)) != 3:
        _fail("mean_rgb", tuple(config.mean_rgb), "must be three numbers (R, G, B) on 0..255")

    data_parallel = _validate_mesh(config)
    _validate_model_parallel(config)
    if config.model_parallel == "dense":  # the conv batch spreads over every device
        data_parallel *= sharding.mesh_shape(config.mesh, jax.device_count())[1]
    devices_per_batch = max(data_parallel, jax.process_count())
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % devices_per_batch:
            _fail(
                field,
                config[field],
                f"must be divisible by the {devices_per_batch} data-parallel devices "
                f"(mesh {tuple(config.mesh)} on {jax.device_count()} devices)",
            )

    micro = config.micro_batch_size
    if micro != machine_defaults.AUTO and (
        micro < 0 or (micro and (config.batch_size % micro or micro % devices_per_batch))
    ):
        _fail(
            "micro_batch_size",
            micro,
            f"must divide batch_size={config.batch_size} and be divisible by the {devices_per_batch} "
            "data-parallel devices (0 = no micro-batches, -1 = chosen for the machine)",
        )

    _validate_model(config.model)
    _validate_init(config)
    if config.resize_size < config.model.input_size:
        _fail("resize_size", config.resize_size, f"must be >= model.input_size={config.model.input_size}")
    _validate_optimizer(config.optimizer, network_layers(config))
