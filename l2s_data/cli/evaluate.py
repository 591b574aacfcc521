"""`l2s evaluate CONFIG` and `l2s report eval RUN`: thin wrappers over l2s_data.evaluate."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from l2s_data.cli._common import cells, console, fail, say
from l2s_data.errors import L2SError



def evaluate(
    config: Path = typer.Argument(..., help="TOML evaluation config (see l2s_data/evaluate/configs/)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the run id and the rows still missing; generate nothing."),
    workers: int = typer.Option(0, "--workers", min=0,
                                help="0 = run in this process. N = N Ray actors over the plan's units: one GPU each "
                                     "when the config's device is CUDA, else N CPU actors of --cpus-per-worker CPUs "
                                     "(torch threads)."),
    address: Optional[str] = typer.Option(None, "--address",
                                          help="Ray cluster to join (HOST:6379 or 'auto'); default: $RAY_ADDRESS, "
                                               "else a local Ray started for this run. Needs --workers N."),
    cpus_per_worker: int = typer.Option(1, "--cpus-per-worker", min=1, help="CPU actors: CPUs (torch threads) each."),
    max_retries: int = typer.Option(3, "--max-retries", min=0,
                                    help="Ray retries of a failed unit, and restarts of a dead actor."),
) -> None:
    """Steer, generate and score every configured method and alpha; commit the rows.

    One row per (method, alpha, sample) lands in the store's `evaluations` table; a rerun of the same config skips the rows already committed. With --workers N the units of work are spread over Ray actors (each loads the model once); a killed actor is restarted and its unit retried. Query the rows with `l2s sql "SELECT method, alpha, response FROM evaluations WHERE run_id = '...'"`, and write the report with `l2s report eval RUN_ID --store STORE --out DIR`.
    """
    from l2s_data.evaluate import Evaluation
    from l2s_data.evaluate.distributed import run_evaluation

    try:
        ev = Evaluation.from_file(config)
        say(f"run {ev.run_id} -> {ev.config.run.store}")
        if dry_run:
            plan = ev.plan()
            say(f"rows asked for: {plan.total_rows}; missing: {plan.missing_rows} in {len(plan.units)} unit(s)")
            return
        with Progress(TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task("evaluate", total=None)

            def on_start(infos) -> None:
                devices = sorted({i["device"] for i in infos})
                bar.console.print(f"{len(infos)} Ray worker(s) up on {', '.join(devices)}")

            report = run_evaluation(ev, workers=workers, address=address, cpus_per_worker=cpus_per_worker,
                                    max_restarts=max_retries, max_task_retries=max_retries,
                                    on_plan=lambda p: bar.update(task, total=p.missing_rows),
                                    on_done=lambda o: bar.advance(task, o.samples), on_start=on_start)
        for note in report.notes:
            say(note)
        if report.computed_rows == 0:
            say("nothing to compute: every row of this config is already in the store")
        else:
            say(f"computed {report.computed_rows} row(s) of {report.plan.total_rows} in "
                f"{report.seconds:.1f} s")
        say(f"report: l2s report eval {report.run_id} --store {ev.config.run.store} --out DIR")
    except L2SError as err:
        fail(err, code=2)


def report_eval(
    run_id: str = typer.Argument(..., help="The evaluation run id (printed by `l2s evaluate`)."),
    out: Path = typer.Option(..., "--out", help="Folder for report.md, report.html, results.json and the PNGs."),
    store: Optional[str] = typer.Option(None, "--store", help="Store URL. Default: $L2S_STORE or ./store."),
    select: Optional[str] = typer.Option(None, "--select", help="Metric that picks alpha per method on the "
                                         "validation part (default: accuracy for POPE, desired_rate for safety)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw the PNG plots (--no-plots: the same "
                               "tables, tests and results.json without them, in less time)."),
) -> None:
    """Write report.md and report.html of an evaluation run, with plots.

    The method x metric table uses the alpha chosen per method on the validation part; PNGs plot
    each metric against alpha, and the metric per category (safety) or subset (POPE)."""
    from l2s_data.evaluate.report import write_report
    from l2s_data.store import Store

    try:
        files = write_report(Store.open(store or os.environ.get("L2S_STORE", "store")), run_id, out, select=select,
                             plots=plots)
    except L2SError as err:
        fail(err, code=2)
    from l2s_data.evaluate.identity import describe_identity
    from l2s_data.evaluate.report import summary_tables

    if files.identity.get("warning"):
        say(files.identity["warning"])
    say("model: " + describe_identity(files.identity))
    for k, (header, rows) in enumerate(summary_tables(files.header, files.rows, files.ns)):
        t = Table(title=f"evaluation {run_id} (test part)" if k == 0 else None)
        for col in header:
            t.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
        for row in rows:
            t.add_row(*cells(*row))
        console.print(t)
    say(f"intervals, n per cell and paired tests: {files.markdown} and {files.html} ({len(files.plots)} plots)")
    say("chosen alphas: " + json.dumps(files.chosen))


def report_group(root: typer.Typer) -> typer.Typer:
    """The ``l2s report`` group of ``root``: the one already mounted, else a new one."""
    for info in root.registered_groups:
        if info.name == "report" and info.typer_instance is not None:
            return info.typer_instance
    group = typer.Typer(help="Reports of training and evaluation runs (Markdown, HTML, PNG).", no_args_is_help=True)
    root.add_typer(group, name="report")
    return group


def register_report(report: typer.Typer) -> None:
    """Mount ``eval`` on a ``report`` group."""
    report.command("eval")(report_eval)


def register_top_level(root: typer.Typer) -> None:
    """Mount ``l2s evaluate`` and ``l2s report eval`` on ``root``."""
    root.command("evaluate")(evaluate)
    register_report(report_group(root))
