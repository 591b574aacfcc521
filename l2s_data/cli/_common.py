"""What every command group shares: the consoles and how a command fails."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(exc: BaseException, *, code: int = 1) -> NoReturn:
    """Print ``exc`` as one error line on stderr (paths stay greppable) and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)
