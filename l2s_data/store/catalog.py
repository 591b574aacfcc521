"""The SQL catalog: a sandboxed, in-memory DuckDB over the store's committed tables.

Each :class:`Catalog` opens a fresh in-memory connection, registers the committed Parquet parts
as pyarrow datasets (read through fsspec, never through DuckDB extensions) and the snapshot's
manifest rows (on a local disk, read by DuckDB's own Parquet reader from exactly the snapshot's
files, the only paths it may open), creates the views of ``schemas/catalog.sql``, sets its
resource limits (:class:`SQLLimits`), and only then locks it down::

    SET allowed_paths = [the snapshot's manifest files]   -- local stores
    SET memory_limit = ...               -- a share of RAM by default
    SET temp_directory = ''              -- no spilling, unless asked, then a private folder
    SET enable_external_access = false   -- no file reads, COPY, ATTACH, INSTALL/LOAD
    SET lock_configuration = true        -- and no SET to turn any of it back on

On top of that lock, each statement is parsed first and anything but a single read-only query
is refused with :class:`SQLRefusedError`, so nothing a user types reaches the store's files.

Every statement runs on a worker thread while the calling thread waits for it. The caller thus
stays free to enforce the statement's time limit and to see Ctrl-C (DuckDB does not return to
Python while it computes); either one interrupts the statement with ``con.interrupt()``.

Fragments that the library splices into its own queries (the loader's ``where=``) are parsed
by DuckDB as one expression and applied as a relation filter: see :meth:`Catalog.select_sample_ids`.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import pyarrow as pa

from l2s_data.errors import L2SError, SQLMemoryError, SQLTimeoutError, StoreError
from l2s_data.schemas import TABLES, catalog_sql
from l2s_data.store.limits import SQLLimits, parse_size, resolve_limits
from l2s_data.store.sandbox import VIEWS, bind_params, parse_one, refuse, where_expression

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


class Catalog:
    """A locked DuckDB connection over one snapshot of a store. Use as a context manager."""

    def __init__(self, tables: Tables, snapshot: Snapshot, *, limits: SQLLimits | None = None, **overrides: Any):
        """``limits``, or the defaults, with any field of :class:`SQLLimits` overridden by name
        (``Catalog(t, s, timeout_s=5)``); an unknown name is refused."""
        self.tables = tables
        self.snapshot = snapshot
        self.limits = resolve_limits(limits, overrides)
        self.con = duckdb.connect(":memory:")
        self._spill_dir: str | None = None
        self._readable: frozenset[str] = frozenset()
        self._running: threading.Thread | None = None
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        con = self.con
        con.execute("SET threads TO 2")
        backend = self.tables.backend
        if backend.is_local and self.snapshot.files:
            # DuckDB reads the snapshot's manifest files itself, and only those very files:
            # nothing else, in the store or outside it, once external access is off.
            self._readable = frozenset(backend.path(f) for f in self.snapshot.files)
            con.execute("SET allowed_paths = ?", [sorted(self._readable)])
        for name in TABLES:
            if name == "manifests":  # scanned lazily, live rows only (the view filters too)
                self._register_manifests()
            else:
                con.register(f"_{name}", self.tables.dataset(name))
        for stmt in con.extract_statements(catalog_sql()):
            con.execute(stmt)
        self._apply_limits()
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")

    def _register_manifests(self) -> None:
        """``_manifests``: the live rows of the snapshot's files, ``_excluded``: the attempts
        whose rows do not count. On a local disk DuckDB's own Parquet reader scans the files
        (parallel, reading only the columns and row groups a statement needs); elsewhere a
        pyarrow dataset read through fsspec."""
        con, snap, backend = self.con, self.snapshot, self.tables.backend
        con.register("_excluded", snap.excluded_table())
        con.unregister("_manifests")
        paths = [backend.path(f) for f in snap.files]
        if not (backend.is_local and paths and set(paths) <= self._readable):
            # Elsewhere, or files that a compaction wrote since the catalog was locked (its
            # readable paths are fixed then): the same rows through a pyarrow dataset.
            con.register("_manifests", snap.visible_dataset())
            return
        rel = con.read_parquet(paths)
        if snap.excluded:  # an anti join keeps exactly the left side's columns
            rel = rel.join(con.table("_excluded"), "attempt", how="anti")
        rel.create_view("_manifests", replace=True)

    def _apply_limits(self) -> None:
        """Memory and spilling; must run before the configuration is locked."""
        con = self.con
        con.execute(f"SET memory_limit = '{parse_size(self.limits.memory_limit)}B'")
        if self.limits.spill is None:
            # An in-memory DuckDB spills into ./.tmp of the working directory by default.
            con.execute("SET temp_directory = ''")
        else:
            self._spill_dir = tempfile.mkdtemp(prefix="l2s-sql-spill-")
            con.execute("SET temp_directory = ?", [self._spill_dir])  # a parameter: no quoting
            con.execute(f"SET max_temp_directory_size = '{parse_size(self.limits.spill)}B'")

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._running is not None and self._running.is_alive():
            # A statement that ignored its interrupt still uses the connection: closing it under
            # that thread is unsafe, so leave both to the process's exit.
            return
        self.con.close()
        if self._spill_dir is not None:
            shutil.rmtree(self._spill_dir, ignore_errors=True)
            self._spill_dir = None

    # -- statements ------------------------------------------------------------------------
    def statement(self, query: str) -> duckdb.Statement:
        """Parse ``query``; SQLRefusedError unless it is exactly one read-only SELECT."""
        return parse_one(query, self.con)

    def query(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *, timeout_s: float | None = _DEFAULT,
              on_wait: Callable[[float], None] | None = None) -> pa.Table:
        """Run one read-only SELECT and return every row.

        ``timeout_s`` overrides the catalog's limit for this call (None: no limit);
        ``on_wait(elapsed_s)`` is called a few times a second while the statement runs.
        """
        st = self.statement(query)
        run = self._start(query, timeout_s, on_wait)
        return self._call(run, lambda: self.con.sql(st.query, params=bind_params(params)).to_arrow_table())

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
        reader = self._call(run, lambda: self.con.sql(st.query).to_arrow_reader(batch_rows))
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
            base = self.con.sql("SELECT * FROM memberships LEFT JOIN samples USING (sample_id)")
            try:
                rel = base.filter(expr)
            except duckdb.BinderException as exc:
                raise StoreError(
                    f"where={where!r} does not fit the catalog: {exc}. A where fragment may use the "
                    f"columns of memberships joined with samples: {', '.join(base.columns)}."
                ) from exc
            rel = rel.project("sample_id").distinct().order("sample_id")
            parse_one(rel.sql_query(), self.con)  # what runs is one SELECT, whatever `where` held
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
        runs once more over the files that replaced it.
        """
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
        timed_out = False
        try:
            while not done.wait(_WAIT_SLICE_S if run.deadline is None
                                else max(0.0, min(_WAIT_SLICE_S, run.deadline - time.monotonic()))):
                if run.deadline is not None and time.monotonic() >= run.deadline:
                    timed_out = True
                    self._stop(done)
                    break
                if run.on_wait is not None:
                    run.on_wait(time.monotonic() - run.started)
        except KeyboardInterrupt:
            self._stop(done)
            raise
        if "error" not in box:
            if "value" in box:
                return box["value"]  # finished just as the deadline passed
            raise _timed_out(run)  # never stopped: the statement still holds the connection
        exc = box["error"]
        if timed_out:
            raise _timed_out(run) from exc
        if restartable and isinstance(exc, duckdb.Error) and self._follow_compaction():
            return self._call(run, fn, restartable=False)
        err = _classify(exc, run)
        if err is exc:
            raise exc
        raise err from exc

    def _follow_compaction(self) -> bool:
        """Whether a manifest file this catalog scans is gone; if so, scan the snapshot's rows
        from the files that hold them now (the same rows: a compaction keeps them all)."""
        backend = self.tables.backend
        if all(backend.exists(f) for f in self.snapshot.files):
            return False  # the statement failed for another reason
        self.snapshot.follow()  # StoreError if the snapshot's rows were deleted meanwhile
        self._register_manifests()
        return True

    def _stop(self, done: threading.Event) -> None:
        """Interrupt the running statement and wait a little for it to stop."""
        self.con.interrupt()
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
        self._reader.close()

    def __enter__(self) -> RowStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _next_batch(reader: pa.RecordBatchReader) -> pa.RecordBatch | None:
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None


def _timed_out(run: _Statement) -> SQLTimeoutError:
    return SQLTimeoutError(
        f"SQL stopped after its time limit of {run.timeout_s:g} s. {_shown(run)}. Narrow it (a "
        "WHERE, a LIMIT, fewer joins), or allow it more time with `l2s sql --timeout SECONDS` or "
        "`SQLLimits(timeout_s=...)` (0: no limit)."
    )


def _shown(run: _Statement) -> str:
    q = run.query
    return f"{run.kind}: {q if len(q) <= 200 else q[:200] + '...'!r}"


def _classify(exc: BaseException, run: _Statement) -> BaseException:
    """The library error for what DuckDB (or the Arrow stream over it) raised, by its type."""
    if isinstance(exc, L2SError):
        return exc
    if isinstance(exc, duckdb.PermissionException):
        return refuse(run.query, f"needs access outside the catalog: {exc}")
    if isinstance(exc, duckdb.OutOfMemoryException):
        return SQLMemoryError(
            f"SQL needs more memory than the catalog's limit: {exc}. {_shown(run)}. Narrow it, "
            "raise the limit (`l2s sql --memory-limit 80%`, or `SQLLimits(memory_limit=...)`), or "
            "let it spill to disk (`--spill 20GB`, or `SQLLimits(spill=...)`)."
        )
    if isinstance(exc, duckdb.ParserException):
        return StoreError(f"SQL does not parse: {exc}. {_shown(run)}")
    if isinstance(exc, (duckdb.CatalogException, duckdb.BinderException)):
        return StoreError(
            f"SQL failed: {exc}. {_shown(run)}. The catalog's views are {', '.join(VIEWS)}; list "
            "a view's columns with `SELECT * FROM <view> LIMIT 0`."
        )
    if isinstance(exc, duckdb.Error):
        return StoreError(f"SQL failed: {exc}. {_shown(run)}")
    if isinstance(exc, OSError):
        # Arrow's stream interface carries an error raised mid-stream without DuckDB's type.
        return StoreError(f"SQL failed while its rows streamed: {exc}. {_shown(run)}")
    return exc
