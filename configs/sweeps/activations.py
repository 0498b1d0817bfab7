"""ReLU vs tanh (Section 3.1, Figure 1), two seeds each.

    python -m launch.sweep --config configs/paper.py --sweep configs/sweeps/activations.py \
        --workdir runs/activations
    python -m launch.report --workdir runs/activations --target_error 0.25

The paper's claim: a four-layer CNN with ReLUs reaches 25% training error on
CIFAR-10 six times faster (in iterations) than the same net with tanh. The
report's "steps to target" column is that measure.
"""

from launch.sweep import grid


def get_sweep() -> list[dict]:
    return grid({"model.activation": ["relu", "tanh"], "seed": [0, 1]})
