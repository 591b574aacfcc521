"""`l2s store ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="store commands.", no_args_is_help=True)


def register_top_level(root: typer.Typer) -> None:
    """Mount the store's top-level commands (``l2s sql``, ``l2s catalog``) on ``root``."""
