"""The SQL catalog: a sandboxed, in-memory DuckDB over the store's committed tables.

Each :class:`Catalog` runs statements on a locked, in-memory DuckDB connection over one
snapshot (``connection``: its views, limits and lock, and the only files it may open).

On top of that lock, each statement is parsed first and anything but a single read-only query
is refused with :class:`SQLRefusedError`, so nothing a user types reaches the store's files.

Every statement runs on a worker thread while the calling thread waits for it. The caller thus
stays free to enforce the statement's time limit and to see Ctrl-C (DuckDB does not return to
Python while it computes); either one interrupts the statement with ``con.interrupt()``.

``Store.sql`` and ``Store.catalog`` reuse a catalog built earlier in this process when nothing
it reflects has changed (``catalog_pool``: keyed by the store, every table part, the snapshot's
manifest files and the limits); such a catalog is the same locked connection, reached only
after the same checks. ``Catalog(...)`` itself always builds a fresh one.

Fragments that the library splices into its own queries (the loader's ``where=``) are parsed
by DuckDB as one expression and applied as a relation filter: see :meth:`Catalog.select_sample_ids`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import pyarrow as pa

from l2s_data.errors import StoreError
from l2s_data.store import catalog_pool
from l2s_data.store.connection import Locked, build, register_manifests
from l2s_data.store.contract import PART_TABLES
from l2s_data.store.limits import SQLLimits, parse_size, resolve_limits
from l2s_data.store.sandbox import bind_params, parse_one, where_expression
from l2s_data.store.sql_errors import classify, leaves_connection_sound, timed_out

if TYPE_CHECKING:
    from l2s_data.store.snapshot import Snapshot
    from l2s_data.store.tables import Tables

__all__ = ["Catalog", "QueryHead", "RowStream"]

#: How often a waiting caller wakes up to check the deadline and report progress.
_WAIT_SLICE_S = 0.25
#: How long an interrupted statement may take to stop before the caller stops waiting for it.
_STOP_GRACE_S = 10.0
#: Rows per Arrow batch when results are streamed.
_BATCH_ROWS = 65_536

T = TypeVar("T")


@dataclass(frozen=True)
class QueryHead:
    """The first rows of a result, and how many rows it had in all."""

    table: pa.Table
    total_rows: int

    @property
    def left_out(self) -> int:
        return self.total_rows - self.table.num_rows


_DEFAULT: Any = object()  # "use the catalog's own timeout"


@dataclass
class _Statement:
    """One statement's text, deadline and progress callback, shared by the calls that run it."""

    query: str
    timeout_s: float | None
    on_wait: Callable[[float], None] | None
    started: float
    kind: str = "Query"

    @property
    def deadline(self) -> float | None:
        return None if self.timeout_s is None else self.started + self.timeout_s


# --- the catalog ------------------------------------------------------------------------


def key_of(tables: Tables, snapshot: Snapshot, limits: SQLLimits) -> catalog_pool.CatalogKey:
    """What a catalog over ``snapshot`` with ``limits`` exposes (one listing of each table)."""
    backend = tables.backend
    return catalog_pool.CatalogKey(
        store=(backend.url, backend.fs),
        parts=tuple((name, tables.stamped_files(name)) for name in PART_TABLES),
        manifests=tuple((i.name, i.sha256) for i in snapshot.live),
        excluded=tuple(sorted(snapshot.excluded)),
        memory_bytes=parse_size(limits.memory_limit),
        spill_bytes=None if limits.spill is None else parse_size(limits.spill),
    )


class Catalog:
    """A locked DuckDB connection over one snapshot of a store. Use as a context manager."""

    def __init__(self, tables: Tables, snapshot: Snapshot, *, limits: SQLLimits | None = None, reuse: bool = False,
                 **overrides: Any):
        """``limits``, or the defaults, with any field of :class:`SQLLimits` overridden by name
        (``Catalog(t, s, timeout_s=5)``); an unknown name is refused. ``reuse``: take an idle
        connection built for exactly this from ``catalog_pool`` if there is one, and give it
        back there on :meth:`close` if it is still sound."""
        self.tables = tables
        self.snapshot = snapshot
        self.limits = resolve_limits(limits, overrides)
        self._key = key_of(tables, snapshot, self.limits)
        self._pid = os.getpid()
        self._running: threading.Thread | None = None
        self._streams = 0  # streams opened and not yet closed
        #: whether close() may give the connection back to the pool; never with a spill folder,
        #: which is removed on close (SQLLimits.spill)
        self._reuse = self._sound = reuse and self.limits.spill is None
        self._db: Locked | None = catalog_pool.take(self._key) if reuse else None
        if self._db is None:
            self._db = build(tables, snapshot, self.limits, self._key)

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The locked connection itself, for trusted code that runs statements below the check.
        What it runs is not checked, so a catalog whose connection was handed out is closed,
        never reused."""
        self._sound = False
        return self._live()

    def _live(self) -> duckdb.DuckDBPyConnection:
        if self._db is None:
            raise StoreError("this catalog is closed; open another one (`store.catalog()`).")
        return self._db.con

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection, or give it back to the pool (a ``reuse`` catalog still sound).
        Either way this catalog runs no further statement."""
        db = self._db
        if db is None:
            return
        if self._running is not None and self._running.is_alive():
            # A statement that ignored its interrupt still uses the connection: closing it under
            # that thread is unsafe, so leave both to the process's exit.
            return
        self._db = None
        if self._pid != os.getpid():
            catalog_pool.keep(db)  # the parent's: closing or dropping it here would hang
            return
        if self._reuse and self._sound and not self._streams:
            catalog_pool.give(self._key, db)
            return
        if self._reuse:
            catalog_pool.discard()
        db.close()

    # -- statements ------------------------------------------------------------------------
    def statement(self, query: str) -> duckdb.Statement:
        """Parse ``query``; SQLRefusedError unless it is exactly one read-only SELECT."""
        return parse_one(query, self._live())

    def query(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *, timeout_s: float | None = _DEFAULT,
              on_wait: Callable[[float], None] | None = None) -> pa.Table:
        """Run one read-only SELECT and return every row.

        ``timeout_s`` overrides the catalog's limit for this call (None: no limit);
        ``on_wait(elapsed_s)`` is called a few times a second while the statement runs.
        """
        st = self.statement(query)
        run = self._start(query, timeout_s, on_wait)
        return self._call(run, lambda: self._live().sql(st.query, params=bind_params(params)).to_arrow_table())

    def head(self, query: str, max_rows: int, *, timeout_s: float | None = _DEFAULT,
             on_wait: Callable[[float], None] | None = None) -> QueryHead:
        """The first ``max_rows`` rows of ``query``, and the number of rows it has in all.

        The rows past the cap are counted as they stream by, never held.
        """
        if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 0:
            raise ValueError(f"max_rows must be an int >= 0, got {max_rows!r}.")
        kept: list[pa.RecordBatch] = []
        have = total = 0
        with self.stream(query, timeout_s=timeout_s, on_wait=on_wait) as rows:
            for batch in rows:
                total += batch.num_rows
                if have < max_rows:
                    part = batch.slice(0, max_rows - have)
                    kept.append(part)
                    have += part.num_rows
        return QueryHead(pa.Table.from_batches(kept, schema=rows.schema), total)

    def stream(self, query: str, *, timeout_s: float | None = _DEFAULT,
               on_wait: Callable[[float], None] | None = None, batch_rows: int = _BATCH_ROWS) -> RowStream:
        """Start one read-only SELECT and stream its rows as Arrow record batches.

        The statement starts here (a refusal or a bad column raises here); its time limit covers
        it from here to the last batch. Use the stream in a ``with`` block, or close it, before
        the next statement on this catalog.
        """
        st = self.statement(query)
        run = self._start(query, timeout_s, on_wait)
        reader = self._call(run, lambda: self._live().sql(st.query).to_arrow_reader(batch_rows))
        self._streams += 1
        return RowStream(self, run, reader)

    def select_sample_ids(self, where: str, *, timeout_s: float | None = _DEFAULT) -> list[str]:
        """Sample ids (sorted) that ``where`` selects over memberships joined with samples.

        ``where`` is a condition such as ``"split = 'train' AND category IN ('c0', 'c1')"`` over
        the columns of both views. DuckDB parses it as one expression (``sandbox.check_where``), and it
        is applied as a relation filter, so it cannot end the query or start another one.
        """
        expr = where_expression(where)
        run = self._start(where, timeout_s, None, kind="WHERE fragment")

        def select() -> list[str]:
            base = self._live().sql("SELECT * FROM memberships LEFT JOIN samples USING (sample_id)")
            try:
                rel = base.filter(expr)
            except duckdb.BinderException as exc:
                raise StoreError(
                    f"where={where!r} does not fit the catalog: {exc}. A where fragment may use the "
                    f"columns of memberships joined with samples: {', '.join(base.columns)}."
                ) from exc
            rel = rel.project("sample_id").distinct().order("sample_id")
            parse_one(rel.sql_query(), self._live())  # what runs is one SELECT, whatever `where` held
            return rel.to_arrow_table()["sample_id"].to_pylist()

        return self._call(run, select)

    # -- running on a worker thread ----------------------------------------------------------
    def _start(self, query: str, timeout_s: float | None, on_wait, *, kind: str = "Query") -> _Statement:
        if timeout_s is _DEFAULT:
            timeout_s = self.limits.timeout_s
        else:
            timeout_s = SQLLimits(timeout_s=timeout_s).timeout_s
        return _Statement(query, timeout_s, on_wait, time.monotonic(), kind)

    def _call(self, run: _Statement, fn: Callable[[], T], *, restartable: bool = True) -> T:
        """Run ``fn`` (DuckDB calls on this connection) on a worker thread, within ``run``'s limits.

        The calling thread waits on an event in short slices: Ctrl-C reaches it there, and past
        the deadline it interrupts the statement. Errors come back classified by their type. A
        ``restartable`` call that failed because a compaction removed a manifest file under it
        runs once more over the files that replaced it. A statement that was interrupted, or
        failed in a way that may leave the connection unusable, keeps it from being reused.
        """
        self._live()  # StoreError once closed
        if self._running is not None and self._running.is_alive():
            raise StoreError(
                "this catalog still runs an interrupted statement that has not stopped; "
                "open a new Catalog (or a new process) for the next query."
            )
        done = threading.Event()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the caller, which classifies it
                box["error"] = exc
            finally:
                done.set()

        worker = threading.Thread(target=work, name="l2s-sql", daemon=True)
        self._running = worker
        worker.start()
        timed_out_now = False
        try:
            while not done.wait(_WAIT_SLICE_S if run.deadline is None
                                else max(0.0, min(_WAIT_SLICE_S, run.deadline - time.monotonic()))):
                if run.deadline is not None and time.monotonic() >= run.deadline:
                    timed_out_now = True
                    self._stop(done)
                    break
                if run.on_wait is not None:
                    run.on_wait(time.monotonic() - run.started)
        except BaseException:  # Ctrl-C, or an on_wait that raised
            self._sound = False
            self._stop(done)
            raise
        if "error" not in box:
            if "value" in box:
                return box["value"]  # finished just as the deadline passed
            self._sound = False
            raise timed_out(run.query, run.kind, run.timeout_s)  # never stopped: it still holds the connection
        exc = box["error"]
        if timed_out_now or not leaves_connection_sound(exc):
            self._sound = False
        if timed_out_now:
            raise timed_out(run.query, run.kind, run.timeout_s) from exc
        if restartable and isinstance(exc, duckdb.Error) and self._follow_compaction():
            return self._call(run, fn, restartable=False)
        err = classify(exc, run.query, run.kind)
        if err is exc:
            raise exc
        raise err from exc

    def _follow_compaction(self) -> bool:
        """Whether a manifest file this catalog scans is gone; if so, scan the snapshot's rows
        from the files that hold them now (the same rows: a compaction keeps them all)."""
        backend = self.tables.backend
        if all(backend.exists(f) for f in self.snapshot.files):
            return False  # the statement failed for another reason
        self._sound = False  # its manifests are no longer what its key names
        self.snapshot.follow()  # StoreError if the snapshot's rows were deleted meanwhile
        register_manifests(self._db, self.snapshot, backend)
        return True

    def _stop(self, done: threading.Event) -> None:
        """Interrupt the running statement and wait a little for it to stop."""
        self._live().interrupt()
        done.wait(_STOP_GRACE_S)


class RowStream:
    """The rows of one running statement: ``schema``, then its record batches when iterated."""

    def __init__(self, catalog: Catalog, run: _Statement, reader: pa.RecordBatchReader):
        self._catalog, self._run, self._reader = catalog, run, reader
        self.schema: pa.Schema = reader.schema

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        def step() -> pa.RecordBatch | None:
            # Not restartable: batches have come out already.
            return self._catalog._call(self._run, lambda: _next_batch(self._reader), restartable=False)

        while (batch := step()) is not None:
            yield batch

    def close(self) -> None:
        """Let go of the result, so that the catalog can run its next statement."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
            self._catalog._streams -= 1

    def __enter__(self) -> RowStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _next_batch(reader: pa.RecordBatchReader) -> pa.RecordBatch | None:
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None
