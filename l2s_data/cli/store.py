"""`l2s store info|verify|gc|compact|delete`, `l2s sql`, `l2s catalog export`: thin wrappers."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Optional

import pyarrow as pa
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from l2s_data.cli._common import fail
from l2s_data.errors import L2SError

app = typer.Typer(
    help="Inspect and maintain an activation store (Zarr shards + Parquet manifests).",
    no_args_is_help=True,
)
catalog_app = typer.Typer(help="The SQL catalog of a store.", no_args_is_help=True)

_console = Console()
_STORE_HELP = "Store URL: a local path or an fsspec URL (s3://bucket/store). Default: $L2S_STORE or ./store."


def _store_url(url: Optional[str]) -> str:
    return url or os.environ.get("L2S_STORE", "store")


def _open(url: Optional[str]):
    from l2s_data.store import Store

    return Store.open(_store_url(url))


_fail = fail


def _rich_table(t: pa.Table, title: str | None = None) -> Table:
    out = Table(title=title)
    for name in t.column_names:
        out.add_column(name)
    for row in t.to_pylist():
        out.add_row(*["" if v is None else str(v) for v in row.values()])
    return out


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
        i = _open(store).info()
    except L2SError as exc:
        _fail(exc)
    _console.print(f"store      {i.url}")
    _console.print(f"snapshot   {i.snapshot_id}")
    _console.print(f"rows       {i.rows} committed keys in {i.committed_shards} shards "
                   f"({i.manifest_files} manifest files)")
    _console.print(f"bytes      {_human(i.bytes)} under shards/")
    _console.print(f"orphans    {len(i.orphans)} attempts, {_human(i.orphan_bytes)} (`l2s store gc` removes them)")
    if i.recipes.num_rows:
        _console.print(_rich_table(i.recipes, title="recipes"))


@app.command("verify")
def verify_cmd(store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP)) -> None:
    """Re-read every committed chunk and check its crc32c and each row's manifest checksum."""
    try:
        s = _open(store)
        with Progress(console=_console, transient=True) as bar:
            task = bar.add_task("verifying arrays", total=None)
            problems = s.verify(progress=lambda done, total: bar.update(task, completed=done, total=total))
    except L2SError as exc:
        _fail(exc)
    if not problems:
        _console.print("[green]ok[/green]: every committed chunk and row matches its checksum")
        return
    t = Table(title=f"{len(problems)} problem(s)")
    for c in ("shard", "recipe", "where", "problem"):
        t.add_column(c)
    for p in problems:
        t.add_row(p.shard, p.recipe_id, p.what, p.message)
    _console.print(t)
    raise typer.Exit(1)


@app.command("gc")
def gc_cmd(
    store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP),
    grace: float = typer.Option(3600.0, help="Keep uncommitted attempts younger than this many seconds (live writers)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
) -> None:
    """Remove orphaned attempts: crashed writers, and attempts that lost a commit race."""
    try:
        r = _open(store).gc(grace_s=grace, dry_run=dry_run)
    except L2SError as exc:
        _fail(exc)
    verb = "would remove" if dry_run else "removed"
    _console.print(f"{verb} {len(r.removed)} attempt(s), {_human(r.bytes)}; kept {len(r.kept_recent)} recent")
    for d in r.removed:
        _console.print(f"  {d}")


@app.command("compact")
def compact_cmd(store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP)) -> None:
    """Fold all manifest files into one (atomically; readers stay correct, the snapshot id stays)."""
    try:
        n, name = _open(store).compact()
    except L2SError as exc:
        _fail(exc)
    _console.print(f"folded {n} manifest file(s) into {name}" if name else "nothing to compact")


@app.command("migrate")
def migrate_cmd(store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP)) -> None:
    """Upgrade a store written by an older l2s-data in place (rewrites its manifests only)."""
    from l2s_data.store import Store

    try:
        n = Store.migrate(_store_url(store))
    except L2SError as exc:
        _fail(exc)
    _console.print(f"migrated: folded {n} manifest file(s) into one checked manifest" if n else "already current")


@app.command("delete")
def delete_cmd(
    recipe: str = typer.Argument(..., help="Recipe id or name."),
    store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP),
    force: bool = typer.Option(False, "--force", help="Delete even while runs reference the recipe."),
) -> None:
    """Delete every stored row of a recipe (refused while runs reference it, unless --force)."""
    try:
        r = _open(store).delete_recipe(recipe, force=force)
    except L2SError as exc:
        _fail(exc)
    _console.print(f"deleted recipe {r.recipe_id}: {r.rows} rows in {len(set(r.shards))} shard(s), {_human(r.bytes)}")


def _print_table(t: pa.Table, fmt: str) -> None:
    if fmt == "json":
        typer.echo(json.dumps(t.to_pylist(), default=str, indent=1))
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(t.column_names)
        for row in t.to_pylist():
            w.writerow(["" if v is None else v for v in row.values()])
        typer.echo(buf.getvalue().rstrip("\n"))
    else:
        _console.print(_rich_table(t))


def sql_cmd(
    query: str = typer.Argument(..., help='One read-only SELECT, e.g. "SELECT view, count(*) FROM manifests GROUP BY view".'),
    store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
) -> None:
    """Query the store's catalog (views: samples, memberships, recipes, manifests, runs,
    evaluations, errors, shards) in a sandboxed in-memory DuckDB: read-only, no file access."""
    if fmt not in ("table", "csv", "json"):
        _fail(ValueError(f"--format must be table, csv or json, got {fmt!r}"))
    try:
        t = _open(store).sql(query)
    except L2SError as exc:
        _fail(exc)
    _print_table(t, fmt)


@catalog_app.command("export")
def export_cmd(
    file: str = typer.Argument(..., help="New DuckDB database file to write (never overwritten)."),
    store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP),
) -> None:
    """Materialise the catalog views as tables in FILE.duckdb, for the DuckDB CLI and other tools."""
    try:
        counts = _open(store).export_catalog(file)
    except L2SError as exc:
        _fail(exc)
    _console.print(f"wrote {file}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def register_top_level(root: typer.Typer) -> None:
    """Mount the store's top-level commands (``l2s sql``, ``l2s catalog ...``) on ``root``."""
    root.command("sql")(sql_cmd)
    root.add_typer(catalog_app, name="catalog")
