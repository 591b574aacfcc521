"""`l2s extract CONFIG`: plan and run an extraction (thin: parse, call l2s_data.extract, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from l2s_data.cli._common import console, fail, note, say
from l2s_data.errors import L2SError


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


def plan_table(plan) -> Table:
    """One column per recipe (input, pair), one row per figure: what the store holds and what a
    run computes. Recipes are columns so that the table stays narrow (about 50 columns for the
    two recipes) and no name or figure is cut on an 80-column terminal. The caller prints the
    title line (paths in it stay whole: ``say``)."""
    rows: dict[str, list[str]] = {k: [] for k in ("id", "views", "positions", "layers", "samples", "missing samples",
                                                  "missing keys", "bytes")}
    t = Table()
    t.add_column("recipe", no_wrap=True)
    for kind, ref in plan.recipes.items():
        t.add_column(kind, justify="right", overflow="fold")
        r = ref.recipe
        miss = plan.missing_samples.get(kind, 0)
        layers = r.layers
        span = f"{layers[0]}..{layers[-1]}" if list(layers) == list(range(layers[0], layers[-1] + 1)) else str(list(layers))
        for k, v in (("id", ref.recipe_id[:8]), ("views", ",".join(r.views)), ("positions", ",".join(r.positions)),
                     ("layers", span), ("samples", str(plan.total_samples) if kind == "input" else "-"),
                     ("missing samples", str(miss)), ("missing keys", f"{miss * r.keys_per_sample:,}"),
                     ("bytes", _size(miss * r.bytes_per_sample))):
            rows[k].append(v)
    for k, values in rows.items():
        t.add_row(k, *values)
    return t


def extract(
    config: Path = typer.Argument(..., help="TOML extraction config (see l2s_data/extract/configs/)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print missing keys, bytes and a time estimate; write nothing."),
    workers: int = typer.Option(0, "--workers", min=0,
                                help="0 = run in this process. N = N Ray actors: one GPU each when the config's "
                                     "device is CUDA, else N CPU actors of --cpus-per-worker CPUs (torch threads)."),
    address: Optional[str] = typer.Option(None, "--address",
                                          help="Ray cluster to join (HOST:6379 or 'auto'); default: $RAY_ADDRESS, "
                                               "else a local Ray started for this run. Needs --workers N."),
    cpus_per_worker: int = typer.Option(1, "--cpus-per-worker", min=1, help="CPU actors: CPUs (torch threads) each."),
    max_retries: int = typer.Option(3, "--max-retries", min=0,
                                    help="Ray retries of a failed shard, and restarts of a dead actor."),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate",
                                   help="Dry run: time one batch on the model to estimate the run time."),
) -> None:
    """Extract the input / pos / neg / p2s views of every selected sample into the store.

    Computes only the keys the store does not have: a repeated, interrupted or grown run
    picks up where the store stands. With --workers N the shards are spread over Ray actors;
    a killed actor is restarted and its shard retried, and a shard that fails every attempt
    ends the run with its name (the committed shards stay). Every run is a row of the
    store's `extractions` table (`l2s sql "SELECT * FROM extractions"`).
    """
    from l2s_data.extract import Extraction
    from l2s_data.extract.distributed import run_extraction

    try:
        ex = Extraction.from_file(config)
        if dry_run:
            with console.status("planning (loading the model and reading the store)..."):
                dr = ex.dry_run(calibrate=calibrate)
            p = dr.plan
            say(f"dry run: {config} -> {ex.config.run.store}")
            console.print(plan_table(p))
            say(f"samples selected: {p.total_samples}; to compute: {p.samples_to_compute} in "
                f"{len(p.shards)} shard(s); missing keys: {p.missing_keys:,}; bytes: {_size(p.bytes)} "
                f"({p.bytes:,}); estimated time: {_duration(dr.seconds)} ({dr.calibration})")
            for kind, n in p.skipped_quarantined.items():
                if n:
                    console.print(Text(f"{n} sample(s) quarantined earlier for the {kind} recipe are skipped "
                                       f"(set [run] retry_errors = true to retry)", style="yellow"),
                                  highlight=False, soft_wrap=True)
            for line in dr.notes:
                note(line)
            return
        with Progress(TextColumn("[bold]extract"), BarColumn(), MofNCompleteColumn(), TextColumn("samples"),
                      TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[shards]}"),
                      TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task("extract", total=None, rate="", shards="")

            def on_plan(plan) -> None:
                bar.update(task, total=plan.samples_to_compute, shards=f"0/{len(plan.shards)} shards")

            def on_progress(p) -> None:
                bar.update(task, completed=p.samples_done, rate=f"{p.samples_per_s:.2f} samples/s",
                           shards=f"{p.shards_done}/{p.shards_total} shards, retried {p.retried}, failed {p.failed}")

            def on_start(infos) -> None:
                devices = sorted({i["device"] for i in infos})
                bar.console.print(f"{len(infos)} Ray worker(s) up on {', '.join(devices)}")

            report = run_extraction(ex, workers=workers, address=address, cpus_per_worker=cpus_per_worker,
                                    max_restarts=max_retries, max_task_retries=max_retries, on_plan=on_plan,
                                    on_progress=on_progress, on_start=on_start)
        say(f"extract: {config} -> {report.store}")
        console.print(plan_table(report.plan))
        if report.computed_samples == 0 and report.quarantined == 0:
            say("nothing to compute: every key of this config is already in the store")
        else:
            rate = report.computed_samples / report.seconds if report.seconds else 0.0
            say(f"computed {report.computed_samples} sample(s), wrote {report.written_keys:,} keys in "
                f"{len(report.outcomes)} shard(s), quarantined {report.quarantined} "
                f"({_duration(report.seconds)}, {rate:.2f} samples/s)")
        if report.lost_races:
            say(f"{report.lost_races} shard(s) were committed first by another run (kept theirs)")
        for kind, rid in report.recipe_ids.items():
            say(f"{kind} recipe: {rid}")
        for line in report.notes:
            note(line)
    except L2SError as err:
        fail(err, code=2)


def register_top_level(root: typer.Typer) -> None:
    """Mount ``l2s extract`` on ``root``."""
    root.command("extract")(extract)
