"""PNG plots of an evaluation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

from l2s_data.evaluate.methods import get_method
from l2s_data.evaluate.results import Results

__all__ = ["has_data", "plot_metric_vs_alpha", "plot_group_bars"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def has_data(res: Results, metric: str, count, *, part: str = "test") -> bool:
    """Whether ``metric`` is computed from at least one response (``count(rows, metric)``) for
    some method and alpha: a plot of nothing is not written."""
    return any(count(res.select_rows(method=m, alpha=a, part=part), metric) > 0
               for m in res.methods for a in res.alphas(m))


def plot_metric_vs_alpha(res: Results, metric: str, path: Path, *, part: str = "test") -> Path:
    """``metric`` against alpha: one line per steering method, a dashed level per unsteered one."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        for m in res.methods:
            alphas = res.alphas(m)
            values = [res.compute(res.select_rows(method=m, alpha=a, part=part)).get(metric, math.nan) for a in alphas]
            label = get_method(m).label
            if alphas == [None]:
                ax.axhline(values[0], linestyle="--", linewidth=1, label=label, color="grey" if m == "none" else None)
            else:
                ax.plot(alphas, values, marker="o", label=label)
        ax.set_xlabel("alpha")
        ax.set_ylabel(metric)
        if metric != "quality":  # every other metric is a share in [0, 1]
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{metric} against alpha ({part} part)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def plot_group_bars(groups: dict[str, dict[str, float]], metric: str, key: str, path: Path) -> Path:
    """Grouped bars: ``metric`` per ``key`` value (category or subset), one bar per method."""
    plt = _pyplot()
    names = list(groups)
    methods = list(next(iter(groups.values()))) if groups else []
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(names) + 2), 4.2), dpi=100)
    try:
        width = 0.8 / max(1, len(methods))
        for j, m in enumerate(methods):
            xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(names))]
            ys = [groups[g][m] for g in names]
            ax.bar(xs, [0.0 if math.isnan(y) else y for y in ys], width=width, label=get_method(m).label)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n[:18] for n in names], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(metric)
        ax.set_ylim(0.0, 1.02)
        ax.set_title(f"{metric} per {key} (test part, alpha chosen per method)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
