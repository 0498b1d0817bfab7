"""One config, five seeds: the run-to-run spread an ablation's delta must beat.

    python -m launch.sweep --config configs/digits.py --sweep configs/sweeps/seeds.py \
        --workdir runs/seeds
    python -m launch.report --workdir runs/seeds
    python -m alexnet_jax.evaluate --sweep runs/seeds    # each seed, then their ensemble

`seed` sets the initialisation, the data order, the crops and dropout. With
configs/paper.py the ensemble is the paper's "5 CNNs" (Table 2: 38.1 / 16.4).
"""

from launch.sweep import grid


def get_sweep() -> list[dict]:
    return grid({"seed": [0, 1, 2, 3, 4]})
