"""PNG plots of an evaluation, drawn on matplotlib's Agg canvas (no display, no pyplot).

A report draws one metric-against-alpha plot per metric. :class:`AlphaPlots` draws them all on
one figure: the axes and their ticks are made once, only the lines, labels and legend change
from one metric to the next, and the margins are fixed (the labels of these plots are known),
so no layout pass runs per plot. That costs about half of a fresh pyplot figure with
``tight_layout`` per plot (measured on a 2-core machine: ~80 against ~160 ms a plot), and draws
the same pixels as a fresh figure with the same margins (tests/evaluate/test_report.py).
"""

from __future__ import annotations

import math
from pathlib import Path

from l2s_data.evaluate.methods import get_method
from l2s_data.evaluate.results import Results
from l2s_data.figures import agg_figure

__all__ = ["AlphaPlots", "has_data", "plot_metric_vs_alpha", "plot_group_bars"]

def has_data(res: Results, metric: str, count, *, part: str = "test") -> bool:
    """Whether ``metric`` is computed from at least one response (``count(rows, metric)``) for
    some method and alpha: a plot of nothing is not written."""
    return any(count(res.select_rows(method=m, alpha=a, part=part), metric) > 0
               for m in res.methods for a in res.alphas(m))


class AlphaPlots:
    """Metric-against-alpha plots of one run's ``part``, one PNG per :meth:`plot` call, all drawn
    on one reused figure; every metric is computed once, for all plots."""

    #: fixed margins (fractions of the 6.4 x 4.0 inch figure): the y label is a metric name, the
    #: y tick labels up to 6 characters (a quality of 1-10 ticks at "3.075"), the title one line
    MARGINS = {"left": 0.125, "right": 0.97, "bottom": 0.12, "top": 0.92}

    def __init__(self, res: Results, *, part: str = "test") -> None:
        self.res, self.part = res, part
        self._values = res.metrics(part=part)                     # {(method, alpha): {metric: value}}
        self._fig = agg_figure(figsize=(6.4, 4.0), dpi=100)
        self._ax = self._fig.subplots()
        self._fig.subplots_adjust(**self.MARGINS)
        self._ax.grid(alpha=0.3)

    @property
    def figure(self):
        """The matplotlib figure the plots are drawn on (its last plot)."""
        return self._fig

    def _reset(self) -> None:
        """Remove the previous plot's lines and legend; keep the axes, ticks and grid."""
        ax = self._ax
        for line in list(ax.lines):
            line.remove()
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        ax.set_prop_cycle(None)          # the next plot's first line is C0 again
        ax.relim()
        ax.set_autoscale_on(True)        # a share's fixed y range does not carry over to quality

    def plot(self, metric: str, path: Path) -> Path:
        """``metric`` against alpha: one line per steering method, a dashed level per unsteered one."""
        res, ax = self.res, self._ax
        self._reset()
        for m in res.methods:
            alphas = res.alphas(m)
            values = [self._values[(m, a)].get(metric, math.nan) for a in alphas]
            label = get_method(m).label
            if alphas == [None]:
                ax.axhline(values[0], linestyle="--", linewidth=1, label=label, color="grey" if m == "none" else None)
            else:
                ax.plot(alphas, values, marker="o", label=label)
        ax.set_xlabel("alpha")
        ax.set_ylabel(metric)
        if metric != "quality":  # every other metric is a share in [0, 1]
            ax.set_ylim(-0.02, 1.02)
        # y given: matplotlib would otherwise measure the tick labels on every draw to place it
        ax.set_title(f"{metric} against alpha ({self.part} part)", y=1.0)
        ax.legend(fontsize=8)
        self._fig.savefig(path, format="png")
        return path


def plot_metric_vs_alpha(res: Results, metric: str, path: Path, *, part: str = "test") -> Path:
    """``metric`` against alpha, one plot (a report draws several with one :class:`AlphaPlots`)."""
    return AlphaPlots(res, part=part).plot(metric, path)


def plot_group_bars(groups: dict[str, dict[str, float]], metric: str, key: str, path: Path) -> Path:
    """Grouped bars: ``metric`` per ``key`` value (category or subset), one bar per method."""
    names = list(groups)
    methods = list(next(iter(groups.values()))) if groups else []
    fig = agg_figure(figsize=(max(6.4, 0.9 * len(names) + 2), 4.2), dpi=100)
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(names))]
        ys = [groups[g][m] for g in names]
        ax.bar(xs, [0.0 if math.isnan(y) else y for y in ys], width=width, label=get_method(m).label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n[:18] for n in names], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_ylim(0.0, 1.02)
    ax.set_title(f"{metric} per {key} (test part, alpha chosen per method)", y=1.0)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()  # the group names differ from run to run: their rotated labels are measured
    fig.savefig(path, format="png")
    return path
