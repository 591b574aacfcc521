"""`l2s evaluate CONFIG` and `l2s report eval RUN`: thin wrappers over l2s_data.evaluate."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from l2s_data.cli._common import fail
from l2s_data.errors import L2SError

console = Console()


def evaluate(
    config: Path = typer.Argument(..., help="TOML evaluation config (see l2s_data/evaluate/configs/)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the run id and the rows still missing; generate nothing."),
    workers: int = typer.Option(0, "--workers", help="0 = run in this process (Ray workers: a later release)."),
) -> None:
    """Steer, generate and score every configured method and alpha; commit the rows.

    One row per (method, alpha, sample) lands in the store's `evaluations` table. A rerun of the same config skips the rows already committed. Query the rows with
    `l2s sql "SELECT method, alpha, response FROM evaluations WHERE run_id = '...'"`, and write
    the report with `l2s report eval RUN_ID --store STORE --out DIR`.
    """
    from l2s_data.errors import ConfigError
    from l2s_data.evaluate import Evaluation

    try:
        if workers != 0:
            raise ConfigError(f"--workers {workers}: only --workers 0 (in-process) is available in this release; "
                              f"Ray workers come with the Ray runner")
        ev = Evaluation.from_file(config)
        console.print(f"run {ev.run_id} -> {ev.config.run.store}")
        if dry_run:
            plan = ev.plan()
            console.print(f"rows asked for: {plan.total_rows}; missing: {plan.missing_rows} in {len(plan.units)} unit(s)")
            return
        with Progress(TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task("evaluate", total=None)
            report = ev.run(on_plan=lambda p: bar.update(task, total=p.missing_rows),
                            on_done=lambda o: bar.advance(task, o.samples))
        if report.computed_rows == 0:
            console.print("nothing to compute: every row of this config is already in the store")
        else:
            console.print(f"computed {report.computed_rows} row(s) of {report.plan.total_rows} in "
                          f"{report.seconds:.1f} s")
        console.print(f"report: l2s report eval {report.run_id} --store {ev.config.run.store} --out DIR")
    except L2SError as err:
        fail(err, code=2)


def report_eval(
    run_id: str = typer.Argument(..., help="The evaluation run id (printed by `l2s evaluate`)."),
    out: Path = typer.Option(..., "--out", help="Folder for report.md, report.html, results.json and the PNGs."),
    store: Optional[str] = typer.Option(None, "--store", help="Store URL. Default: $L2S_STORE or ./store."),
    select: Optional[str] = typer.Option(None, "--select", help="Metric that picks alpha per method on the "
                                         "validation part (default: accuracy for POPE, desired_rate for safety)."),
) -> None:
    """Write report.md and report.html of an evaluation run, with plots.

    The method x metric table uses the alpha chosen per method on the validation part; PNGs plot
    each metric against alpha, and the metric per category (safety) or subset (POPE)."""
    from l2s_data.evaluate.report import write_report
    from l2s_data.store import Store

    try:
        files = write_report(Store.open(store or os.environ.get("L2S_STORE", "store")), run_id, out, select=select)
    except L2SError as err:
        fail(err, code=2)
    t = Table(title=f"evaluation {run_id} (test part)")
    for col in files.header:
        t.add_column(col, justify="left" if col == "method" else "right")
    for row in files.rows:
        t.add_row(*row)
    console.print(t)
    console.print(f"report: {files.markdown} and {files.html} ({len(files.plots)} plots)")
    console.print("chosen alphas: " + json.dumps(files.chosen))


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
