"""What user SQL may be: one read-only SELECT over the catalog views, values bound as parameters,
and WHERE fragments that DuckDB reads as exactly one expression.

Everything here runs before a statement reaches the catalog's connection, which is locked down
as well (``enable_external_access = false``, ``lock_configuration = true``; see ``catalog``).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb

from l2s_data.errors import SQLRefusedError, StoreError
from l2s_data.memo import Memo

__all__ = ["VIEWS", "FIX", "bind_params", "refuse", "parse_one", "check_where", "where_expression"]

#: Views a user can query.
VIEWS = ("samples", "memberships", "recipes", "manifests", "runs", "evaluations", "errors", "extractions",
         "shards")

READ_ONLY = {duckdb.StatementType.SELECT}
FIX = (
    "Only one read-only SELECT over the catalog views "
    f"({', '.join(VIEWS)}) is allowed; the catalog cannot write, read files, attach databases, "
    "install extensions or change settings. To work elsewhere, `l2s catalog export FILE.duckdb`."
)


def bind_params(params: Sequence[Any] | Mapping[str, Any] | None) -> list[Any] | dict[str, Any] | None:
    """DuckDB's form of bound parameters: a list for ``?``, a dict for ``$name``; None if none."""
    if params is None:
        return None
    if isinstance(params, Mapping):
        return dict(params) or None
    if isinstance(params, (str, bytes)):
        raise SQLRefusedError(
            f"params must be a sequence of values (for ?) or a mapping (for $name), not the "
            f"{type(params).__name__} {params!r}: pass [value].")
    return list(params) or None


def refuse(query: str, why: str) -> SQLRefusedError:
    shown = query if len(query) <= 200 else query[:200] + "..."
    return SQLRefusedError(f"SQL refused ({why}): {shown!r}. {FIX}")


def parse_one(query: str, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.Statement:
    """Parse ``query``; SQLRefusedError unless it is exactly one read-only SELECT. Without
    ``con`` the parse runs on this process's parser connection (see :func:`_parser`)."""
    if not isinstance(query, str) or not query.strip():
        raise refuse(str(query), "empty query")

    def parse() -> duckdb.Statement:
        if con is not None:
            return _parse_one(query, con)
        with _PARSER_LOCK:
            return _parse_one(query, _parser())

    return _ACCEPTED.get(query, parse)


#: Texts that passed the check, with their statement. The verdict depends on the text alone
#: (DuckDB's parser and syntax tree, on any connection), so a statement run again is not checked
#: again: the check costs ~2-3 ms, and `Store.sql` makes it twice. Only accepted texts are kept.
_ACCEPTED = Memo(256)


def _parse_one(query: str, con: duckdb.DuckDBPyConnection) -> duckdb.Statement:
    try:
        stmts = con.extract_statements(query)
    except duckdb.Error as exc:
        raise StoreError(f"SQL does not parse: {exc}. Query: {query!r}") from exc
    if len(stmts) != 1:
        raise refuse(query, f"{len(stmts)} statements; exactly one is allowed")
    st = stmts[0]
    if st.type not in READ_ONLY:
        raise refuse(query, f"{st.type.name} statement")
    _refuse_sources(query, con)
    return st


_PARSER_LOCK = threading.Lock()
_PARSER: tuple[int, duckdb.DuckDBPyConnection] | None = None
#: A parent's parser connection in a forked child: kept, never closed or dropped (destroying a
#: copy of a DuckDB database joins worker threads the child does not have, and hangs).
_INHERITED: list[duckdb.DuckDBPyConnection] = []


def _parser() -> duckdb.DuckDBPyConnection:
    """An empty in-memory connection that only parses (never runs a user's statement), one per
    process (a forked child opens its own): opening a DuckDB connection costs ~18 ms, which
    every `Store.sql` paid once more for its check before the catalog's own (measured)."""
    global _PARSER
    if _PARSER is None or _PARSER[0] != os.getpid():
        if _PARSER is not None:
            _INHERITED.append(_PARSER[1])
        con = duckdb.connect(":memory:", config={"threads": 1})  # parsing needs no worker thread
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        _PARSER = (os.getpid(), con)
    return _PARSER[1]


#: Table functions a statement may call: they make rows, never read a file.
TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
_NAME = re.compile(r"^\w+$")


def _refuse_sources(query: str, con: duckdb.DuckDBPyConnection) -> None:
    """Refuse a SELECT that reads from anything but named relations: a table function other
    than :data:`TABLE_FUNCTIONS` (``read_parquet``, ``glob``, ``query``...) or a quoted path
    (``FROM 'x.parquet'``), wherever it appears (subqueries and CTEs included). DuckDB's own
    syntax tree says what each FROM item is; a statement it cannot serialise is refused."""
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0])
    except (duckdb.Error, ValueError, TypeError) as exc:
        raise refuse(query, f"its sources cannot be checked: {exc}") from exc
    if tree.get("error"):
        raise refuse(query, f"its sources cannot be checked: {tree.get('error_message', tree)}")
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            fn = node.get("function") or {}
            name = str(fn.get("function_name", "?")) if isinstance(fn, dict) else "?"
            if name.lower() not in TABLE_FUNCTIONS:
                raise refuse(query, f"table function {name}() reads outside the catalog views")
        elif kind == "BASE_TABLE" and not _NAME.match(str(node.get("table_name", ""))):
            raise refuse(query, f"{node.get('table_name')!r} is not a view name (files are not read)")
        stack.extend(node.values())


def check_where(fragment: str) -> str:
    """Check a WHERE fragment with DuckDB's own parser; return it unchanged, or refuse it.

    Refused (:class:`SQLRefusedError`): an empty fragment; anything DuckDB does not read as
    exactly one expression (a ``)`` that would close an outer parenthesis, a second statement,
    an open quote); and, found by DuckDB's tokenizer, ``;`` and comments: a fragment is one
    condition, not a script, and a comment would hide part of it from whoever reads it in a log.
    """
    where_expression(fragment)
    return fragment


def where_expression(fragment: str) -> duckdb.Expression:
    """``fragment`` parsed by DuckDB as one expression, ready for a relation's ``filter``."""
    if not isinstance(fragment, str) or not fragment.strip():
        raise refuse(str(fragment), "empty WHERE fragment")
    try:
        fragment.encode()
    except UnicodeEncodeError as exc:
        raise refuse(fragment, f"not valid text: {exc}") from exc
    for text, kind in _token_texts(fragment):
        if kind == duckdb.token_type.comment:
            raise refuse(fragment, "comments are not allowed in a WHERE fragment")
        if kind == duckdb.token_type.operator and ";" in text:
            raise refuse(fragment, "';' would end the query; a WHERE fragment is one condition")
    try:
        return duckdb.SQLExpression(fragment)
    except (duckdb.ParserException, duckdb.InvalidInputException) as exc:
        raise refuse(fragment, f"not one SQL expression: {exc}") from exc


def _token_texts(text: str) -> list[tuple[str, Any]]:
    """DuckDB's tokens of ``text``, each as (its text, its type); DuckDB counts UTF-8 bytes."""
    raw = text.encode()
    found = duckdb.tokenize(text)
    ends = [at for at, _ in found[1:]] + [len(raw)]
    return [(raw[at:end].decode(errors="replace").strip(), kind) for (at, kind), end in zip(found, ends)]
