"""The paper's LRN and pooling ablations (Sections 3.3 and 3.4), two seeds each.

    python -m launch.sweep --config configs/paper.py --sweep configs/sweeps/ablations.py \
        --workdir runs/ablations
    python -m launch.report --workdir runs/ablations

LRN on/off x overlapping (3x3/2) / non-overlapping (2x2/2) pooling. The first
variant (LRN, overlapping pooling) is the paper's network, the baseline of
the report. The paper's deltas on ILSVRC-2012 val, top-1 / top-5 (docs/paper.md):
LRN -1.4 / -1.2 points, overlapping pooling -0.4 / -0.3. The towers
comparisons are configs/sweeps/towers.py.
"""

from launch.sweep import grid, product


def get_sweep() -> list[dict]:
    architectures = grid({"model.use_lrn": [True, False], "model.pool_window": [3, 2]})
    return product(architectures, grid({"seed": [0, 1]}))
