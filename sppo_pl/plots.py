"""Per-iteration plots of a run from its ``metrics.csv`` (matplotlib, imported lazily, no display needed).

One PNG per panel, each against the self-play iteration:
- ``accuracy.png``: ``val/acc`` (greedy accuracy on held-out prompts; 0 is the starting model);
- ``reward.png``: ``val/reward_mean`` (greedy) and ``rollout/reward_mean`` (sampled);
- ``win_rate.png``: ``val/win_rate``, greedy responses against the starting model's, with the 1/2 line;
- ``loss.png``: ``train/loss``, mean over each iteration's optimizer steps.
A panel whose metrics the run never logged is skipped.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

PANELS = {
    "accuracy": [("val/acc", "val/iteration", "greedy, held out")],
    "reward": [
        ("val/reward_mean", "val/iteration", "greedy, held out"),
        ("rollout/reward_mean", "rollout/iteration", "sampled, training prompts"),
    ],
    "win_rate": [("val/win_rate", "val/iteration", "greedy vs the starting model")],
    "loss": [("train/loss", "epoch", "mean per iteration")],
}


def iteration_series(rows: list[dict], metric: str, x_key: str) -> tuple[list[float], list[float]]:
    """(x, y): ``metric`` against ``x_key``, averaged over the rows that share an x (ordered by x)."""
    groups: dict[float, list[float]] = defaultdict(list)
    for row in rows:
        if row.get(metric) not in (None, "") and row.get(x_key) not in (None, ""):
            groups[float(row[x_key])].append(float(row[metric]))
    xs = sorted(groups)
    return xs, [sum(groups[x]) / len(groups[x]) for x in xs]


def plot_metrics(metrics_csv: Path, out_dir: Path) -> list[Path]:
    """Write the panels for ``metrics_csv`` under ``out_dir``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    with Path(metrics_csv).open() as f:
        rows = list(csv.DictReader(f))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, lines in PANELS.items():
        series = [(label, *iteration_series(rows, metric, x)) for metric, x, label in lines]
        if not any(xs for _, xs, _ in series):
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, xs, ys in series:
            if xs:
                ax.plot(xs, ys, marker="o", label=label)
        if name == "win_rate":
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("self-play iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(lines[0][0] if len(lines) == 1 else name.replace("_", " "))
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png", dpi=100)
        plt.close(fig)
        written.append(out_dir / f"{name}.png")
    return written
