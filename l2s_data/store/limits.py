"""What one SQL catalog may spend: a statement's time, DuckDB's memory, and spilling.

Sizes are written as people write them (``4GB``, ``512MiB``, ``50%`` of RAM) and checked when a
:class:`SQLLimits` is made, so a typo is an error naming the field before any query runs.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["SQLLimits", "parse_size", "resolve_limits"]

_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
_SHARE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*")


def _total_memory() -> int:
    """Physical memory, or the cgroup's limit where one is set and smaller."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def parse_size(text: str | int, *, what: str = "size") -> int:
    """Bytes of a size such as ``4GB``, ``512MiB``, ``1000000`` or, for memory, ``50%`` of RAM."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"{what} must be a size such as '4GB', '512MiB' or '50%', got {text!r}.")
    if isinstance(text, int):
        n = text
    elif m := _SHARE.fullmatch(text):
        share = float(m.group(1))
        if not 0 < share <= 100:
            raise ValueError(f"{what} {text!r}: a share of RAM must be in (0%, 100%].")
        n = int(_total_memory() * share / 100)
    elif (m := _SIZE.fullmatch(text)) and m.group(2).lower() in _UNITS:
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        raise ValueError(
            f"{what} {text!r} is not a size: write a number with a unit (B, KB, MB, GB, TB, KiB, "
            "MiB, GiB, TiB), e.g. '4GB', or a share of RAM such as '50%'."
        )
    if n < 1:
        raise ValueError(f"{what} must be at least 1 byte, got {text!r}.")
    return n


class SQLLimits(BaseModel):
    """What one catalog may spend. Unknown keys are refused by name.

    - ``timeout_s``: seconds a statement may run, fetching its rows included; 0 or None: no limit.
    - ``memory_limit``: DuckDB's memory limit, a size (``'4GB'``) or a share of RAM (``'50%'``).
    - ``spill``: None keeps spilling off (a query over the limit fails with
      :class:`SQLMemoryError`); a size lets DuckDB spill up to that much into a temporary folder
      of this catalog's own, removed when the catalog closes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float | None = 60.0
    memory_limit: str = "50%"
    spill: str | None = None

    @field_validator("timeout_s")
    @classmethod
    def _timeout(cls, v: float | None) -> float | None:
        if v is None or v == 0:
            return None
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"timeout_s must be a number of seconds >= 0 (0: no limit), got {v!r}")
        return float(v)

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, v: str) -> str:
        parse_size(v, what="memory_limit")
        return v

    @field_validator("spill")
    @classmethod
    def _spill(cls, v: str | None) -> str | None:
        if v is not None:
            if _SHARE.fullmatch(v):
                raise ValueError(f"spill must be a size such as '10GB', not a share of RAM: {v!r}")
            parse_size(v, what="spill")
        return v


def resolve_limits(limits: SQLLimits | None, overrides: dict[str, Any]) -> SQLLimits:
    """``limits`` (or the defaults) with the fields named in ``overrides`` replaced."""
    base = limits if limits is not None else SQLLimits()
    if not overrides:
        return base
    return SQLLimits(**{**base.model_dump(), **overrides})  # unknown names refused by name

