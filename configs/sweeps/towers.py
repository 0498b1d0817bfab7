"""The paper's towers comparisons (Section 3.2 and docs/paper.md), two seeds each.

    python -m launch.sweep --config configs/paper.py --sweep configs/sweeps/towers.py \
        --workdir runs/towers
    python -m launch.report --workdir runs/towers

- the two-tower net (the baseline): 40.7 / 18.2 top-1 / top-5 error with 10
  views (docs/paper.md, run #145: 40.66 / 18.21);
- no cross-tower communication (`model.cross_tower=False`: conv3 reads its
  own tower, the towers meet at fc6, our reading): 41.83 / 19.33;
- Section 3.2's one-GPU net (one tower, half the kernels in every
  convolution but the last): the two-GPU net is 1.7 / 1.2 points better.
"""

from launch.sweep import grid, product

ONE_GPU_NET = {"model.towers": 1, "model.filters": (48, 128, 192, 192, 256)}


def get_sweep() -> list[dict]:
    return product([{}, {"model.cross_tower": False}, ONE_GPU_NET], grid({"seed": [0, 1]}))
