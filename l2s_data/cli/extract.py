"""`l2s extract CONFIG`."""

from __future__ import annotations

import typer


def register_top_level(root: typer.Typer) -> None:
    """Mount ``l2s extract`` on ``root``."""
