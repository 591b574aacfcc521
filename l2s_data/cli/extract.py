"""`l2s extract CONFIG`: plan and run an extraction (thin: parse, call l2s_data.extract, print)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from l2s_data.errors import ConfigError, L2SError

console = Console()


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _duration(s: float | None) -> str:
    if s is None:
        return "unknown"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def plan_table(plan, title: str) -> Table:
    """One row per recipe: what the store holds and what a run computes."""
    t = Table(title=title)
    for col in ("recipe", "id", "views", "positions", "layers", "samples", "missing", "missing keys", "bytes"):
        t.add_column(col, justify="right" if col in ("samples", "missing", "missing keys", "bytes") else "left")
    for kind, ref in plan.recipes.items():
        r = ref.recipe
        eligible = plan.total_samples if kind == "input" else None
        miss = plan.missing_samples.get(kind, 0)
        layers = r.layers
        span = f"{layers[0]}..{layers[-1]}" if list(layers) == list(range(layers[0], layers[-1] + 1)) else str(list(layers))
        t.add_row(kind, ref.recipe_id[:8], ",".join(r.views), ",".join(r.positions), span,
                  str(eligible if eligible is not None else "-"), str(miss), f"{miss * r.keys_per_sample:,}",
                  _size(miss * r.bytes_per_sample))
    return t


def extract(
    config: Path = typer.Argument(..., help="TOML extraction config (see l2s_data/extract/configs/)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print missing keys, bytes and a time estimate; write nothing."),
    workers: int = typer.Option(0, "--workers", help="0 = run in this process (Ray workers: a later release)."),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate",
                                   help="Dry run: time one batch on the model to estimate the run time."),
) -> None:
    """Extract the input / pos / neg / p2s views of every selected sample into the store.

    Computes only the keys the store does not have: a repeated, interrupted or grown run
    picks up where the store stands.
    """
    from l2s_data.extract import Extraction

    try:
        if workers != 0:
            raise ConfigError(f"--workers {workers}: only --workers 0 (in-process) is available in this "
                              f"release; Ray workers come with the Ray runner")
        ex = Extraction.from_file(config)
        if dry_run:
            with console.status("planning (loading the model and reading the store)..."):
                dr = ex.dry_run(calibrate=calibrate)
            p = dr.plan
            console.print(plan_table(p, f"dry run: {config} -> {ex.config.run.store}"))
            console.print(f"samples selected: {p.total_samples}; to compute: {p.samples_to_compute} in "
                          f"{len(p.shards)} shard(s); missing keys: {p.missing_keys:,}; bytes: {_size(p.bytes)} "
                          f"({p.bytes:,}); estimated time: {_duration(dr.seconds)} ({dr.calibration})")
            for kind, n in p.skipped_quarantined.items():
                if n:
                    console.print(f"[yellow]{n} sample(s) quarantined earlier for the {kind} recipe are skipped "
                                  f"(set [run] retry_errors = true to retry)[/yellow]")
            for note in dr.notes:
                console.print(f"[yellow]note:[/yellow] {note}")
            return
        with Progress(TextColumn("[bold]extract"), BarColumn(), MofNCompleteColumn(), TextColumn("samples"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task("extract", total=None)

            def on_plan(plan) -> None:
                bar.update(task, total=plan.samples_to_compute)

            report = ex.run(on_plan=on_plan, on_done=lambda o: bar.advance(task, o.samples + o.quarantined))
        console.print(plan_table(report.plan, f"extract: {config} -> {report.store}"))
        if report.computed_samples == 0 and report.quarantined == 0:
            console.print("nothing to compute: every key of this config is already in the store")
        else:
            rate = report.computed_samples / report.seconds if report.seconds else 0.0
            console.print(f"computed {report.computed_samples} sample(s), wrote {report.written_keys:,} keys in "
                          f"{len(report.outcomes)} shard(s), quarantined {report.quarantined} "
                          f"({_duration(report.seconds)}, {rate:.2f} samples/s)")
        if report.lost_races:
            console.print(f"{report.lost_races} shard(s) were committed first by another run (kept theirs)")
        for kind, rid in report.recipe_ids.items():
            console.print(f"{kind} recipe: {rid}")
        for note in report.notes:
            console.print(f"[yellow]note:[/yellow] {note}")
    except L2SError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None


def register_top_level(root: typer.Typer) -> None:
    """Mount ``l2s extract`` on ``root``."""
    root.command("extract")(extract)
