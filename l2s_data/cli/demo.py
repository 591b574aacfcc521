"""`l2s demo`: tiny model -> synthetic data -> extraction -> a look at the store (thin)."""

from __future__ import annotations

from pathlib import Path

import typer

from l2s_data.cli._common import fail
from l2s_data.errors import L2SError


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the cached checkpoint, data set and store."),
    n: int = typer.Option(260, "--n", min=13, help="Synthetic-safety samples (13 scenarios, half held out; used "
                                                   "when first built)."),
) -> None:
    """Copy the trained tiny LLaVA, build a synthetic-safety set, extract every view into a store,
    train L2S from it and evaluate the seven steering methods (safety and shapes-POPE).

    Runs offline on a CPU in a few minutes; a second run reuses everything and computes nothing.
    """
    from transformers.utils import logging as hf_logging

    from l2s_data.demo import plain_console, run_demo

    hf_logging.disable_progress_bar()  # the demo prints its own steps
    try:
        run_demo(out, n=n, console=plain_console())
    except L2SError as err:
        fail(err, code=2)


def register_top_level(root: typer.Typer) -> None:
    """Mount ``l2s demo`` on ``root``."""
    root.command("demo")(demo)
