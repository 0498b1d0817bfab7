"""launch.report's plot: the learning curves of a sweep's variants."""

from __future__ import annotations

import numpy as np

from launch.run_results import RunResult


def plot_curves(results: list[RunResult], target_error: float, path: str) -> None:
    """Training and validation top-1 error per variant: the mean over seeds
    at the steps they share, shaded between the best and worst seed, each
    step marked where a curve has a single one (a run evaluated once); the
    legend counts the runs drawn (finished ones, when any finished)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    groups: dict[str, list[RunResult]] = {}
    for result in results:
        groups.setdefault(result.group, []).append(result)
    for ax, tag, title in zip(axes, ("train_top1_error", "eval_top1_error"), ("training", "validation")):
        for name, runs in groups.items():
            # A run that stopped early (e.g. diverged) would cut the shared steps short:
            # draw the finished runs when there are any.
            logged = [r for r in runs if tag in r.curves]
            curves = [r.curves[tag] for r in ([r for r in logged if r.status == "finished"] or logged)]
            if not curves:
                continue
            steps = curves[0][0]
            for other, _ in curves[1:]:
                steps = np.intersect1d(steps, other)
            values = np.stack([np.interp(steps, s, v) for s, v in curves]) * 100
            marker = "o" if len(steps) == 1 else None  # a line of one point draws nothing
            (line,) = ax.plot(steps, values.mean(axis=0), marker=marker, label=f"{name} ({len(curves)})")
            if len(curves) > 1:
                ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2)
        if tag == "train_top1_error":
            ax.axhline(target_error * 100, color="grey", linestyle="--", linewidth=1)
        ax.set(title=f"{title} top-1 error", xlabel="step", ylabel="top-1 error (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
