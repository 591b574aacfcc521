"""`l2s demo`."""

from __future__ import annotations

import typer


def register_top_level(root: typer.Typer) -> None:
    """Mount ``l2s demo`` on ``root``."""
