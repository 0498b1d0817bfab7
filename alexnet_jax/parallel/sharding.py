"""The ('data', 'model') device mesh and where batches, parameters and
activations live on it.

The model names the axes of its activations and parameters
(alexnet_jax.model.layers: conv batch, conv channels, dense batch, hidden
units; a parameter's names ride on its initialiser, read here from flax's
boxes). A parallelism scheme is one set of flax logical-axis rules mapping
those names onto mesh axes, the only table of where things live:

  - "towers", the paper's: each pair of devices along 'model' holds the two
    towers, tower a on one device and tower b on the other. conv1, conv2,
    conv4, conv5 with their LRN and pooling stay on their device; conv3 and
    fc6/fc7/fc8 read both towers, each device computing half the outputs.
    The 'data' axis replicates the pair (data parallelism).
  - "dense", Krizhevsky's later "one weird trick" (arXiv:1404.5997):
    convolutions data parallel over every device, dense layers split over
    'model' (each device computes its share of the outputs for the batch of
    its whole model group).

With a model axis of size 1 both schemes are pure data parallelism.
"""

from __future__ import annotations

import collections
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import linen as nn
from flax.core import FrozenDict
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax import errors
from alexnet_jax.model.layers import CONV_BATCH, CONV_CHANNELS, DENSE_BATCH, HIDDEN

PyTree = Any
LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

MESH_AXES = ("data", "model")

SCHEMES: dict[str, LogicalRules] = {
    "towers": ((CONV_BATCH, "data"), (CONV_CHANNELS, "model"), (DENSE_BATCH, "data"), (HIDDEN, "model")),
    "dense": ((CONV_BATCH, ("data", "model")), (CONV_CHANNELS, None), (DENSE_BATCH, "data"), (HIDDEN, "model")),
}

# The logical axes of each parameter, by its path in the parameters
# (("conv2", "kernel"): P(None, None, None, "conv_channels")). Hashable: a
# static field of the train state, which keeps it beside its parameters.
ParamAxes = FrozenDict[tuple[str, ...], P]


def mesh_shape(spec: Sequence[int], num_devices: int) -> tuple[int, int]:
    """Resolves a config mesh such as (-1, 2) against the device count."""
    data, model = spec
    if data == -1:
        data = num_devices // model
    return data, model


def make_mesh(spec: Sequence[int]) -> Mesh:
    """A mesh over the first data * model devices (all of them with -1).

    The devices of one model group are consecutive in `jax.devices()`, i.e.
    on the same host (fast links between the towers).
    """
    data, model = mesh_shape(spec, jax.device_count())
    # Auto axes: jit propagates shardings from the inputs and the model's
    # constraints (GSPMD) instead of requiring sharding-in-types everywhere.
    return jax.make_mesh(
        (data, model),
        MESH_AXES,
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=jax.devices()[: data * model],
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over 'data', replicated over 'model'."""
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


class DataPart(NamedTuple):
    """The examples a process reads: part `index` of `count` even parts of a split.

    Processes whose devices sit on the same rows of the mesh's 'data' axis
    (the two towers of a model pair on two processes) read the same part in
    the same order; `first` marks the lowest-numbered of them, the one that
    writes the part's cache.
    """

    index: int
    count: int
    first: bool = True


def data_part(mesh: Mesh, process_index: int | None = None) -> DataPart:
    """This process's DataPart under `mesh` (`process_index` defaults to jax.process_index()).

    The parts are the distinct sets of 'data' rows the processes hold, in row
    order, so process-local batches concatenated in part order are the global
    batch. Raises ValueError when processes hold overlapping or unequal sets
    of rows (no even split of the batch can feed them).
    """
    return _data_part(mesh, jax.process_index() if process_index is None else process_index)


@functools.lru_cache(maxsize=16)  # called for every batch: the mesh does not change
def _data_part(mesh: Mesh, process_index: int) -> DataPart:
    rows: dict[int, set[int]] = collections.defaultdict(set)  # process -> the 'data' rows of its devices
    for row, devices in enumerate(mesh.devices):  # shape (data, model)
        for device in devices:
            rows[device.process_index].add(row)
    if process_index not in rows:
        raise errors.ConfigError(f"process {process_index} holds no device of the mesh {dict(mesh.shape)}")
    parts = sorted({frozenset(r) for r in rows.values()}, key=min)
    held = [row for part in parts for row in part]
    if len(held) != len(set(held)) or len({len(part) for part in parts}) > 1:
        layout = {p: sorted(r) for p, r in sorted(rows.items())}
        raise errors.ConfigError(
            f"the mesh {dict(mesh.shape)} gives processes overlapping or unequal rows of its 'data' axis "
            f"(process: rows {layout}): each process must hold whole model groups, or share whole groups"
        )
    mine = frozenset(rows[process_index])
    first = min(p for p, r in rows.items() if r == mine)
    return DataPart(parts.index(mine), len(parts), process_index == first)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles this process's part of a batch into global arrays.

    The global batch is `data_part(mesh).count` local batches: processes that
    share a part pass identical local batches, which fill the same rows.
    """
    sharding, parts = batch_sharding(mesh), data_part(mesh).count
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (v.shape[0] * parts, *v.shape[1:]))
        for k, v in local.items()
    }


def prefetch_to_device(
    local_batches: Iterable[dict[str, np.ndarray]], mesh: Mesh, size: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """`global_batch` of each host batch, `size` batches ahead of the consumer.

    The host-to-device copies are asynchronous, so the next batches travel
    while the current step runs; `size` bounds the device memory they hold.
    """
    local_batches = iter(local_batches)
    queue: collections.deque = collections.deque()

    def enqueue(n: int) -> None:
        for local in itertools.islice(local_batches, n):
            queue.append(global_batch(local, mesh))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)


def _path_names(path: tuple) -> tuple[str, ...]:
    """('opt_state', 'inner_state', '3', 'trace', 'conv2', 'kernel') for a tree path."""
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
    return tuple(names)


def with_logical_rules(fn: Callable, scheme: str) -> Callable:
    """`fn` traced with the scheme's logical-axis rules (and no mesh) in
    context: the parameters a model initialises in it come boxed with their
    logical axes (model.layers.with_logical_axes), for `param_axes` to read,
    and compute exactly as without rules."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with nn.logical_axis_rules(SCHEMES[scheme]):
            return fn(*args, **kwargs)

    return wrapped


def param_axes(boxed_params: PyTree) -> ParamAxes:
    """The logical axes of every parameter of a boxed parameter tree (shapes
    or values); P() for a parameter initialised without names."""
    specs = nn.get_partition_spec(boxed_params)
    leaves = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, P))
    return FrozenDict({_path_names(path): spec for path, spec in leaves})


def state_shardings(abstract_state: PyTree, mesh: Mesh, scheme: str, axes: ParamAxes | None = None) -> PyTree:
    """NamedShardings for every leaf of a (train) state under `scheme`.

    A parameter, and an optimiser buffer whose path ends with a parameter's
    ("opt_state/.../trace/conv2/kernel") and has its rank, follow the
    parameter's logical axes: `axes`, by default the state's own
    `param_axes`. Everything else (step, learning rate, schedule
    bookkeeping) is replicated, and so is an axis that does not divide
    evenly over its mesh axes.
    """
    axes = abstract_state.param_axes if axes is None else axes

    def leaf_sharding(path: tuple, leaf: Any) -> NamedSharding:
        names = _path_names(path)
        logical = next((tuple(axes[names[i:]]) for i in range(len(names)) if names[i:] in axes), ())
        if len(logical) != len(leaf.shape):
            logical = (None,) * len(leaf.shape)
        spec = nn.logical_to_mesh_axes(logical, SCHEMES[scheme])
        spec = [s if s is None or size % _mesh_size(mesh, s) == 0 else None for s, size in zip(spec, leaf.shape)]
        return NamedSharding(mesh, P(*spec))

    return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_state)


def _mesh_size(mesh: Mesh, axes: str | tuple[str, ...]) -> int:
    return int(np.prod([mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes)]))


def partitioned(fn: Callable, mesh: Mesh, scheme: str) -> Callable:
    """`fn` traced with `mesh` and the scheme's logical-axis rules in context,
    so the model's logical constraints and per-tower `shard_map` take effect.

    Bound inside the traced function (not around the call) so every trace of
    a jitted `fn` sees them, whoever calls it.
    """

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(SCHEMES[scheme]):
            return fn(*args, **kwargs)

    return wrapped
