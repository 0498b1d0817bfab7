"""Data with several processes: which part of a split each one reads.

The parts follow the mesh, not the process: processes whose devices hold
the same rows of the 'data' axis (the two towers of a model pair on two
processes) read the same examples in the same order (`sharding.data_part`).
Preparation that one process does for all is parallel.processes'; the
data_dir must therefore be shared by the processes, as the workdir is.
"""

from __future__ import annotations

import jax
import ml_collections

from alexnet_jax.parallel import sharding


def config_data_part(config: ml_collections.ConfigDict) -> sharding.DataPart:
    """This process's DataPart under `config.mesh` (part 0 of 1 in a single process)."""
    if jax.process_count() == 1:  # also when the mesh does not fit these devices (evaluating elsewhere)
        return sharding.DataPart(0, 1)
    return sharding.data_part(sharding.make_mesh(config.mesh))
