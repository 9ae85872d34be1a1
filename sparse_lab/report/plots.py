"""PNG plots (matplotlib, Agg): the primary metric against target MACs with Pareto fronts, against sparsity,
and a per-layer density heatmap per model."""

from __future__ import annotations

import math
from pathlib import Path

from sparse_lab.report.density import DensityMatrix
from sparse_lab.report.runs import PRIMARY_METRICS, Group

ANNOTATE_MAX_CELLS = 160  # heatmaps with at most this many cells print each density in its cell


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[tuple[float, float]]:
    """Points not dominated by another with fewer (or equal) MACs and a better (or equal) metric; by MACs."""
    sign = 1.0 if higher_is_better else -1.0
    front: list[tuple[float, float]] = []
    best = -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if sign * y > best:
            front.append((x, y))
            best = sign * y
    return front


def write_plots(groups: list[Group], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    metrics = sorted({g.primary for g in groups if g.primary})
    for metric in metrics:
        mine = [g for g in groups if g.primary == metric and g.summary().mean is not None]
        higher = PRIMARY_METRICS[metric]
        short = metric.split("/")[-1]
        direction = "higher is better" if higher else "lower is better"

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for hw in sorted({g.first.name("hardware") for g in mine}):
            pts = []
            for g in mine:
                macs = g.mean_metric("macs/target")
                if g.first.name("hardware") != hw or macs is None:
                    continue
                s = g.summary()
                pts.append((macs, s.mean))
                ax.errorbar(macs, s.mean, yerr=s.std or 0.0, fmt="o", alpha=0.6, color=f"C{_color(hw)}")
            front = pareto_front(pts, higher)
            if front:
                ax.plot(*zip(*front), "-", color=f"C{_color(hw)}", label=f"{hw} (Pareto front)")
        ax.set_xscale("log")
        ax.set_xlabel("MACs on the target per sample")
        ax.set_ylabel(f"{metric} ({direction})")
        ax.set_title(f"{metric} vs target MACs")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        path = out / f"pareto_{short}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

        fig, ax = plt.subplots(figsize=(7, 4.5))
        methods = sorted({g.first.name("sparsity") for g in mine})
        for i, method in enumerate(methods):
            pts = [
                (g.mean_metric("sparsity/global") or 0.0, g.summary())
                for g in mine
                if g.first.name("sparsity") == method
            ]
            pts.sort(key=lambda p: p[0])
            xs, ss = [p[0] for p in pts], [p[1] for p in pts]
            ax.errorbar(
                xs, [s.mean for s in ss], yerr=[s.std or 0.0 for s in ss], fmt="o-", color=f"C{i}", label=method
            )
        ax.set_xlabel("achieved sparsity (sparsity/global)")
        ax.set_ylabel(f"{metric} ({direction})")
        ax.set_title(f"{metric} vs sparsity, per method")
        ax.grid(alpha=0.3)
        if methods:
            ax.legend(fontsize=8)
        path = out / f"sparsity_{short}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def write_heatmaps(matrices: list[DensityMatrix], out: Path) -> list[Path]:
    """``density_<model>.png`` per matrix: rows = layers, columns = groups, colour = density (0..1)."""
    if not matrices:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written: list[Path] = []
    for m in matrices:
        data = np.array([[math.nan if v is None else v for v in row] for row in m.values], dtype=float)
        rows, cols = data.shape
        longest = max(len(name) for name in m.layers)
        width = min(4.0 + 0.065 * longest + 1.0 * cols, 40.0)
        height = min(2.5 + 0.24 * rows, 60.0)
        fig, ax = plt.subplots(figsize=(width, height))
        cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")  # grey: a layer this group's model lacks
        image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_yticks(range(rows), m.layers, fontsize=7)
        labels = [
            label if sparsity is None else f"{label}\nsparsity {sparsity:.2f}"
            for label, sparsity in zip(m.columns, m.sparsity)
        ]
        tilt = cols > 4
        ax.set_xticks(range(cols), labels, fontsize=8, rotation=30 if tilt else 0, ha="right" if tilt else "center")
        if rows * cols <= ANNOTATE_MAX_CELLS:
            for (i, j), v in np.ndenumerate(data):
                if not math.isnan(v):
                    colour = "white" if v < 0.6 else "black"
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=colour)
        fig.colorbar(image, ax=ax, label="density (fraction of nonzero weights)", fraction=0.04, pad=0.02)
        n = sorted({len(g.runs) for g in m.groups})
        seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
        ax.set_title(f"{m.model}: per-layer density of the final model (mean over {seeds} seed(s))", fontsize=10)
        path = out / m.filename
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _color(name: str) -> int:
    return sum(map(ord, name)) % 10
