"""The ('data', 'model') device mesh and the shardings of batches and state."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "model")


def mesh_shape(spec: Sequence[int], num_devices: int) -> tuple[int, int]:
    """Resolves a config mesh such as (-1, 2) against the device count."""
    data, model = spec
    if data == -1:
        data = num_devices // model
    return data, model


def make_mesh(spec: Sequence[int]) -> Mesh:
    """A mesh over the first data * model devices (all of them with -1)."""
    data, model = mesh_shape(spec, jax.device_count())
    # Auto axes: jit propagates shardings from the inputs (GSPMD) instead of
    # requiring sharding-in-types annotations throughout the model.
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


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles this process's part of a batch into global arrays."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
