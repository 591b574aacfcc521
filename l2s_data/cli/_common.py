"""What every command group shares: the consoles and how a command fails."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

console = Console()
err_console = Console(stderr=True)


def fail(exc: BaseException | str, *, code: int = 1) -> NoReturn:
    """Print ``exc`` as one error line on stderr (paths stay greppable) and exit with ``code``.

    The message is printed verbatim: text such as ``[/INST]`` in it is data, not markup.
    """
    err_console.print(Text.assemble(("error:", "bold red"), " ", str(exc)), highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


def interrupted(what: str) -> NoReturn:
    """Ctrl-C: print ``what`` and leave at once with code 130.

    ``os._exit``, not a normal exit: a DuckDB statement that has not yet honoured its interrupt
    would keep the interpreter's shutdown waiting in the library's teardown, and the user asked
    to stop now. Nothing is left half-written: the store is only read.
    """
    import os
    import sys

    err_console.print(Text.assemble(("error:", "bold red"), " ", what), highlight=False, soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def say(text: str | Text, *, stderr: bool = False) -> None:
    """Print one line verbatim (no markup, emoji codes or highlighting; never wrapped)."""
    (err_console if stderr else console).print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)


def note(text: str) -> None:
    """One ``note:`` line (the label in yellow), the text verbatim."""
    say(Text.assemble(("note:", "yellow"), " ", text))


def cells(*values: object) -> list[Text]:
    """Table cells that show ``values`` verbatim: a plain string cell would be read as markup."""
    return [Text("" if v is None else str(v)) for v in values]
