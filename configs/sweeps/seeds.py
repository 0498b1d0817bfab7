"""One config, five seeds: the run-to-run spread an ablation's delta must beat.

    python -m launch.sweep --config configs/digits.py --sweep configs/sweeps/seeds.py \
        --workdir runs/seeds
    python -m launch.report --workdir runs/seeds

`seed` sets the initialisation, the data order, the crops and dropout.
"""

from launch.sweep import grid


def get_sweep() -> list[dict]:
    return grid({"seed": [0, 1, 2, 3, 4]})
