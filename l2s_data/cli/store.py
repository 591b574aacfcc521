"""`l2s store info|verify|gc|compact|delete`, `l2s sql`, `l2s catalog export`: thin wrappers."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Iterable
from typing import IO, Any, Optional

import pyarrow as pa
import typer
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from l2s_data.cli._common import cells, console, fail, interrupted, printable, say
from l2s_data.errors import L2SError

app = typer.Typer(
    help="Inspect and maintain an activation store (Zarr shards + Parquet manifests).",
    no_args_is_help=True,
)
catalog_app = typer.Typer(help="The SQL catalog of a store.", no_args_is_help=True)

_STORE_HELP = "Store URL: a local path or an fsspec URL (s3://bucket/store). Default: $L2S_STORE or ./store."


def _store_url(url: Optional[str]) -> str:
    return url or os.environ.get("L2S_STORE", "store")


def _open(url: Optional[str]):
    from l2s_data.store import Store

    return Store.open(_store_url(url))


def _fail(exc: BaseException | str, url: Optional[str] = None):
    """Fail with ``exc``; an OSError from the store's filesystem (a server that refuses the
    credentials, a folder without permission) is said as one line, without a traceback."""
    if isinstance(exc, OSError) and not isinstance(exc, L2SError):
        fail(f"cannot access the store at {_store_url(url)}: {exc or type(exc).__name__}. Check the "
             f"credentials (for s3: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE), that they "
             f"may read and write that bucket and prefix, and the URL.")
    fail(exc)


def _rich_table(t: pa.Table, title: str | None = None) -> Table:
    """A rich table whose every cell is plain text: data is never read as markup."""
    out = Table(title=None if title is None else Text(title))
    for name in t.column_names:
        out.add_column(Text(name), overflow="fold")
    for row in _rows(t.to_batches()):
        out.add_row(*cells(*row))
    return out


def _rows(batches: Iterable[pa.RecordBatch]) -> Iterable[tuple]:
    """Rows as tuples, by position (a result may repeat a column name)."""
    for b in batches:
        yield from zip(*(c.to_pylist() for c in b.columns))


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command("info")
def info_cmd(store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP)) -> None:
    """Recipes, rows, bytes, committed shards and orphaned attempts."""
    try:
        i = _open(store).admin.info()
    except (L2SError, OSError) as exc:
        _fail(exc, store)
    say(f"store      {i.url}")
    say(f"snapshot   {i.snapshot_id}")
    say(f"rows       {i.rows} committed keys in {i.committed_shards} shards ({i.manifest_files} manifest files)")
    say(f"bytes      {_human(i.bytes)} under shards/")
    say(f"orphans    {len(i.orphans)} attempts, {_human(i.orphan_bytes)} (`l2s store gc` removes them)")
    if i.unrecognised:
        say(f"unknown    {len(i.unrecognised)} entries under shards/ that the store did not write (kept, never touched):")
        for line in i.unrecognised:
            say(f"  {line}")
    if i.recipes.num_rows:
        console.print(_rich_table(i.recipes, title="recipes"))


@app.command("verify")
def verify_cmd(store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP)) -> None:
    """Re-read every committed chunk and check its crc32c and each row's manifest checksum."""
    try:
        s = _open(store)
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("verifying arrays", total=None)
            problems = s.admin.verify(progress=lambda done, total: bar.update(task, completed=done, total=total))
    except (L2SError, OSError) as exc:
        _fail(exc, store)
    if not problems:
        say(Text.assemble(("ok", "green"), ": every committed chunk and row matches its checksum"))
        return
    t = Table(title=f"{len(problems)} problem(s)")
    for c in ("shard", "recipe", "where", "problem"):
        t.add_column(c, overflow="fold")
    for p in problems:
        t.add_row(*cells(p.shard, p.recipe_id, p.what, p.message))
    console.print(t)
    raise typer.Exit(1)


@app.command("gc")
def gc_cmd(
    store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP),
    grace: float = typer.Option(3600.0, help="Keep uncommitted attempts younger than this many seconds (live writers)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
) -> None:
    """Remove orphaned attempts: crashed writers, and attempts that lost a commit race.

    Only folders the store wrote are removed; links, stray files and unknown names are listed
    and kept."""
    try:
        r = _open(store).admin.gc(grace_s=grace, dry_run=dry_run)
    except (L2SError, OSError) as exc:
        _fail(exc, store)
    verb = "would remove" if dry_run else "removed"
    say(f"{verb} {len(r.removed)} attempt(s), {_human(r.bytes)}; kept {len(r.kept_recent)} recent")
    for d in r.removed:
        say(f"  {d}")
    if r.kept_unknown:
        say(f"kept {len(r.kept_unknown)} entr(ies) the store did not write (never followed nor removed):")
        for line in r.kept_unknown:
            say(f"  {line}")


@app.command("compact")
def compact_cmd(store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP)) -> None:
    """Fold all manifest files into one (atomically; readers stay correct, the snapshot id stays)."""
    try:
        n, name = _open(store).admin.compact()
    except (L2SError, OSError) as exc:
        _fail(exc, store)
    say(f"folded {n} manifest file(s) into {name}" if name else "nothing to compact")


@app.command("migrate")
def migrate_cmd(store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP)) -> None:
    """Upgrade a store written by an older l2s-data in place (rewrites its manifests only)."""
    from l2s_data.store import Admin

    try:
        n = Admin.migrate(_store_url(store))
    except L2SError as exc:
        _fail(exc)
    say(f"migrated: folded {n} manifest file(s) into one checked manifest" if n else "already current")


@app.command("delete")
def delete_cmd(
    recipe: str = typer.Argument(..., help="Recipe id or name."),
    store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP),
    force: bool = typer.Option(False, "--force", help="Delete even while runs reference the recipe."),
) -> None:
    """Delete every stored row of a recipe (refused while runs reference it, unless --force)."""
    try:
        r = _open(store).admin.delete_recipe(recipe, force=force)
    except (L2SError, OSError) as exc:
        _fail(exc, store)
    say(f"deleted recipe {r.recipe_id}: {r.rows} rows in {len(set(r.shards))} shard(s), {_human(r.bytes)}")
    for line in r.kept_unknown:
        say(f"  kept {line}")


_FORMATS = ("table", "csv", "json", "parquet")


def _write_csv(f: IO[str], names: list[str], batches: Iterable[pa.RecordBatch]) -> None:
    """CSV rows; control characters in text are escaped when ``f`` is a terminal (data sent
    to a file or a pipe is written as stored)."""
    w = csv.writer(f, lineterminator="\n")
    tty = f.isatty()
    w.writerow([printable(n) for n in names] if tty else names)
    for row in _rows(batches):
        w.writerow(["" if v is None else (printable(v) if tty and isinstance(v, str) else v) for v in row])


def _json_value(v: Any) -> Any:
    """NaN and the infinities as null: JSON has no such numbers (json.dumps would write NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    return v


def _write_json(f: IO[str], names: list[str], batches: Iterable[pa.RecordBatch]) -> None:
    """A JSON array of objects, one row a line, written as the rows stream."""
    f.write("[")
    sep = "\n"
    for row in _rows(batches):
        obj = {k: _json_value(v) for k, v in zip(names, row)}
        text = json.dumps(obj, default=str, ensure_ascii=False, allow_nan=False)
        f.write(sep + (printable(text) if f.isatty() else text))  # JSON escapes C0 itself, not C1
        sep = ",\n"
    f.write("\n]\n")


def _write_rows(rows, fmt: str, output: Optional[str]) -> None:
    """Every row of ``rows`` (a RowStream) to stdout, or to ``output`` whole or not at all."""
    names = rows.schema.names
    if output is None:
        (_write_csv if fmt == "csv" else _write_json)(sys.stdout, names, rows)
        sys.stdout.flush()
        return
    from l2s_data.store import written_whole

    with written_whole(output) as partial:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            with pq.ParquetWriter(partial, rows.schema) as w:
                for batch in rows:
                    w.write_batch(batch)
        else:
            with open(partial, "w", newline="", encoding="utf-8") as f:
                (_write_csv if fmt == "csv" else _write_json)(f, names, rows)


class _Notice:
    """Says once, on stderr, that a query is still running and how to stop it."""

    def __init__(self, timeout: float):
        self.limit = f"it stops by itself after {timeout:g} s" if timeout else "it has no time limit"
        self.said = False

    def __call__(self, elapsed_s: float) -> None:
        if not self.said and elapsed_s >= 1.0:
            self.said = True
            say(f"query still running after {elapsed_s:.0f} s; Ctrl-C stops it ({self.limit}, --timeout).", stderr=True)


def sql_cmd(
    query: str = typer.Argument(..., help='One read-only SELECT, e.g. "SELECT view, count(*) FROM manifests GROUP BY view".'),
    store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP),
    fmt: str = typer.Option(
        "table", "--format", "-f",
        help="table: at most --max-rows rows for reading, saying how many were left out. "
             "csv, json, parquet: every row, to stdout or --output (parquet needs --output).",
    ),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", help="Write csv/json/parquet rows to this file (whole, or not at all) instead of stdout."),
    max_rows: int = typer.Option(1000, "--max-rows", min=0, help="Rows the table format prints."),
    timeout: float = typer.Option(
        60.0, "--timeout", min=0.0, help="Seconds the query may run, fetching its rows included; 0: no limit."),
    memory_limit: str = typer.Option(
        "50%", "--memory-limit", help="DuckDB's memory limit: a share of RAM ('50%') or a size ('4GB')."),
    spill: Optional[str] = typer.Option(
        None, "--spill", help="Let a query over the memory limit spill up to this much ('20GB') to a private "
                              "temporary folder, removed afterwards. Default: no spilling."),
) -> None:
    """Query the store's catalog (views: samples, memberships, recipes, manifests, runs,
    evaluations, errors, extractions, shards) in a sandboxed in-memory DuckDB: read-only, no
    file access.

    A query runs under a time limit (--timeout) and a memory limit (--memory-limit); Ctrl-C
    stops it. Values print exactly as stored.
    """
    from pydantic import ValidationError

    from l2s_data.store.limits import SQLLimits
    from l2s_data.store.sandbox import parse_one

    if fmt not in _FORMATS:
        fail(f"--format must be one of {', '.join(_FORMATS)}, got {fmt!r}.")
    if fmt == "parquet" and output is None:
        fail("--format parquet writes a file: add --output FILE.parquet.")
    if fmt == "table" and output is not None:
        fail("--output takes every row: use it with --format csv, json or parquet.")
    try:
        limits = SQLLimits(timeout_s=timeout, memory_limit=memory_limit, spill=spill)
    except ValidationError as exc:
        fail("; ".join(str(e.get("ctx", {}).get("error", e["msg"])) for e in exc.errors()))
    notice = _Notice(timeout)
    writing = False
    try:
        parse_one(query)  # refuse before paying for a snapshot and a catalog
        with _open(store).catalog(limits=limits) as cat:
            if fmt == "table":
                head = cat.head(query, max_rows, on_wait=notice)
            else:
                with cat.stream(query, on_wait=notice) as rows:
                    writing = True
                    _write_rows(rows, fmt, output)
                return
    except L2SError as exc:
        fail(exc)
    except KeyboardInterrupt:
        interrupted("interrupted (Ctrl-C): the query was stopped and nothing more was printed.")
    except BrokenPipeError:  # the reader of stdout (`| head`) stopped reading: nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None
    except OSError as exc:
        if output is None or not writing:
            _fail(exc, store)  # the store's filesystem, not an output file
        fail(f"cannot write {output}: {exc}. Check that its folder exists and is writable.")
    console.print(_rich_table(head.table))
    if head.left_out:
        say(f"... {head.left_out} more row(s) not shown ({head.total_rows} in all): raise --max-rows, "
            "or use --format csv|json|parquet for every row.")


@catalog_app.command("export")
def export_cmd(
    file: str = typer.Argument(..., help="New DuckDB database file to write (never overwritten)."),
    store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP),
    timeout: float = typer.Option(
        0.0, "--timeout", min=0.0, help="Seconds each view may take to read; 0: no limit. Ctrl-C stops it."),
) -> None:
    """Materialise the catalog views as tables in FILE.duckdb, for the DuckDB CLI and other tools."""
    try:
        counts = _open(store).admin.export_catalog(file, timeout_s=timeout)
    except L2SError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        interrupted("interrupted (Ctrl-C): the export was stopped.")
    say(f"wrote {file}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def register_top_level(root: typer.Typer) -> None:
    """Mount the store's top-level commands (``l2s sql``, ``l2s catalog ...``) on ``root``."""
    root.command("sql")(sql_cmd)
    root.add_typer(catalog_app, name="catalog")
