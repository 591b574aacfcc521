"""What every command group shares: the consoles and how a command fails."""

from __future__ import annotations

import re
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

console = Console()
err_console = Console(stderr=True)


#: Control characters other than newline and tab: C0, DEL and C1 (ESC starts terminal commands).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    r"""``text`` with every control character but newline and tab written as an escape
    (``\x1b``): data never sends terminal commands (colours, cursor moves, titles)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def fail(exc: BaseException | str, *, code: int = 1) -> NoReturn:
    """Print ``exc`` as one error line on stderr (paths stay greppable) and exit with ``code``.

    The message is printed verbatim: text such as ``[/INST]`` in it is data, not markup;
    control characters are escaped (:func:`printable`).
    """
    err_console.print(Text.assemble(("error:", "bold red"), " ", printable(exc)), highlight=False, soft_wrap=True)
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
    """Print one line verbatim (no markup, emoji codes or highlighting; never wrapped; control
    characters escaped)."""
    if isinstance(text, Text):
        text = text.copy()
        text.plain = printable(text.plain) if _CONTROL.search(text.plain) else text.plain
    else:
        text = printable(text)
    (err_console if stderr else console).print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)


def note(text: str) -> None:
    """One ``note:`` line (the label in yellow), the text verbatim."""
    say(Text.assemble(("note:", "yellow"), " ", text))


def cells(*values: object) -> list[Text]:
    """Table cells that show ``values`` verbatim: a plain string cell would be read as markup."""
    return [Text("" if v is None else printable(v)) for v in values]
