"""Figures for PNG reports: matplotlib's Agg canvas, without pyplot.

``agg_figure(figsize=..., dpi=...)`` is a :class:`matplotlib.figure.Figure` on its own Agg
canvas: no display, not registered with pyplot (which keeps every figure until closed), freed
with its last reference. matplotlib is imported on the first call: importing it costs about a
second, and most of the library never draws.
"""

from __future__ import annotations

from typing import Any

__all__ = ["agg_figure"]


def agg_figure(**kw: Any):
    """A figure on its own Agg canvas (``kw`` as for :class:`matplotlib.figure.Figure`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig
