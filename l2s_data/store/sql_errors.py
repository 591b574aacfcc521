"""What a failed catalog statement raises, and whether its connection may serve another one.

DuckDB's exceptions are classified by their type into the library's errors (each naming the
statement and the fix); :func:`leaves_connection_sound` says which failures end only the
statement, so that the catalog may be reused (see ``catalog_pool``).
"""

from __future__ import annotations

import duckdb

from l2s_data.errors import L2SError, SQLMemoryError, SQLTimeoutError, StoreError
from l2s_data.store.sandbox import VIEWS, refuse

__all__ = ["classify", "leaves_connection_sound", "timed_out"]

#: DuckDB errors raised while a statement is parsed, bound or evaluated row by row: they end that
#: statement and leave the connection as it was. Anything else (an I/O error, memory, an
#: internal or fatal error, an interrupt) closes the catalog instead of reusing it.
_STATEMENT_ONLY = (
    duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException, duckdb.ConversionException,
    duckdb.InvalidInputException, duckdb.OutOfRangeException, duckdb.TypeMismatchException,
    duckdb.NotImplementedException, duckdb.PermissionException,
)


def leaves_connection_sound(exc: BaseException) -> bool:
    """Whether a connection whose statement raised ``exc`` may run the next statement as a
    freshly built one would: the library's own errors and DuckDB's statement-level ones."""
    if isinstance(exc, (duckdb.FatalException, duckdb.InternalException)):
        return False  # subclasses of no type below, but be explicit: never reuse after these
    return isinstance(exc, (L2SError, *_STATEMENT_ONLY))


def timed_out(query: str, kind: str, timeout_s: float | None) -> SQLTimeoutError:
    return SQLTimeoutError(
        f"SQL stopped after its time limit of {timeout_s:g} s. {_shown(query, kind)}. Narrow it (a "
        "WHERE, a LIMIT, fewer joins), or allow it more time with `l2s sql --timeout SECONDS` or "
        "`SQLLimits(timeout_s=...)` (0: no limit)."
    )


def _shown(query: str, kind: str) -> str:
    return f"{kind}: {query if len(query) <= 200 else query[:200] + '...'!r}"


def classify(exc: BaseException, query: str, kind: str) -> BaseException:
    """The library error for what DuckDB (or the Arrow stream over it) raised, by its type."""
    if isinstance(exc, L2SError):
        return exc
    if isinstance(exc, duckdb.PermissionException):
        return refuse(query, f"needs access outside the catalog: {exc}")
    if isinstance(exc, duckdb.OutOfMemoryException):
        return SQLMemoryError(
            f"SQL needs more memory than the catalog's limit: {exc}. {_shown(query, kind)}. Narrow it, "
            "raise the limit (`l2s sql --memory-limit 80%`, or `SQLLimits(memory_limit=...)`), or "
            "let it spill to disk (`--spill 20GB`, or `SQLLimits(spill=...)`)."
        )
    if isinstance(exc, duckdb.ParserException):
        return StoreError(f"SQL does not parse: {exc}. {_shown(query, kind)}")
    if isinstance(exc, (duckdb.CatalogException, duckdb.BinderException)):
        return StoreError(
            f"SQL failed: {exc}. {_shown(query, kind)}. The catalog's views are {', '.join(VIEWS)}; list "
            "a view's columns with `SELECT * FROM <view> LIMIT 0`."
        )
    if isinstance(exc, duckdb.Error):
        return StoreError(f"SQL failed: {exc}. {_shown(query, kind)}")
    if isinstance(exc, OSError):
        # Arrow's stream interface carries an error raised mid-stream without DuckDB's type.
        return StoreError(f"SQL failed while its rows streamed: {exc}. {_shown(query, kind)}")
    return exc
