"""Config files, the same way for every stage: TOML read from a path, and one message that
names every bad or unknown key of a pydantic validation error."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from l2s_data.errors import ConfigError

__all__ = ["read_toml", "validation_message"]


def read_toml(path: str | Path, what: str, *, example: str) -> dict[str, Any]:
    """The table of a TOML file; ConfigError naming ``what`` if it is absent or not TOML."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} does not exist; pass a TOML file (example: {example})")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{what} {str(p)!r} is not valid TOML: {err}") from None


def validation_message(err: ValidationError, what: str) -> str:
    """``invalid <what>:`` then one line per bad key: unknown, missing, or its value's problem."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<top>"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key {where!r}: remove it or check its spelling")
        elif e["type"] == "missing":
            lines.append(f"missing key {where!r}: it is required")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {msg}" + ("" if "got" in msg or "=" in msg else f" (got {e.get('input')!r})"))
    return f"invalid {what}:\n  " + "\n  ".join(lines)
