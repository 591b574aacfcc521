"""`l2s demo`: tiny model -> synthetic data -> extraction -> training -> evaluation -> report (thin)."""

from __future__ import annotations

from pathlib import Path

import typer

from l2s_data.cli._common import fail
from l2s_data.errors import L2SError


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for everything the demo makes: checkpoint, "
                                                             "data sets, store, predictors, reports."),
    n: int = typer.Option(260, "--n", min=39, help="Synthetic-safety samples (13 scenarios, half held out; at least 39 so that training keeps validation rows; used "
                                                   "when first built)."),
    guard: bool = typer.Option(True, help="Score the safety answers with a tiny random guard (the Unsafe "
                                          "columns: noise, and most of the evaluation's time)."),
) -> None:
    """Run every stage of the pipeline offline on a CPU, into OUT.

    The trained tiny LLaVA (shipped with the package) and a synthetic-safety set; an extraction
    of every view and layer into OUT/store on two Ray workers, then the same config again
    (nothing to compute); a behaviour-agnostic pair for Mean-S(BA); an L2S predictor trained
    from the store; the seven steering methods evaluated on the held-out split; the same for
    shapes-POPE; reports in OUT/report and OUT/report-pope. A second run reuses every stage and
    computes nothing.
    """
    from transformers.utils import logging as hf_logging

    from l2s_data.demo import plain_console, run_demo

    hf_logging.disable_progress_bar()  # the demo prints its own steps
    try:
        run_demo(out, n=n, console=plain_console(), guard=guard)
    except L2SError as err:
        fail(err, code=2)


def register_top_level(root: typer.Typer) -> None:
    """Mount ``l2s demo`` on ``root``."""
    root.command("demo")(demo)
