"""`l2s train CONFIG`, `l2s sweep CONFIG` and the `l2s report` group (thin: parse, call, print).

Another stage adds its own report with one call: ``add_report("eval", report_eval_command)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from l2s_data.cli._common import console, fail, say
from l2s_data.errors import ConfigError, L2SError

__all__ = ["report_app", "add_report", "register_top_level"]

_STORE_HELP = "Store URL: a local path or an fsspec URL (s3://bucket/store). Default: $L2S_STORE or ./store."

report_app = typer.Typer(
    help="Write a report (report.md with PNG plots) of a training run, a sweep, or an evaluation.",
    no_args_is_help=True,
)


def add_report(name: str, command: Callable[..., Any]) -> None:
    """Mount ``command`` as ``l2s report NAME`` (its docstring is its help)."""
    report_app.command(name)(command)


def _store(url: Optional[str]):
    from l2s_data.store import Store

    return Store.open(url or os.environ.get("L2S_STORE", "store"))


def train_cmd(
    config: Path = typer.Argument(..., help="TOML training config (see l2s_data/train/configs/tiny-llava.toml)."),
    store: Optional[str] = typer.Option(None, "--store", "-s", help="Override the config's store URL."),
    out_dir: Optional[str] = typer.Option(None, "--out-dir", help="Override the config's out_dir."),
) -> None:
    """Train an L2S predictor from the cache: h_X at L' -> v_X (P2S) at L*, no base model.

    Reads the selected rows from the store (once, when they fit in memory), trains with the
    config's loss, optimizer and schedule, evaluates on the validation rows against Mean-S,
    saves <out_dir>/<run_id>/predictor.safetensors and commits a row to the `runs` table.
    """
    from l2s_data.train import load_train_config, train

    try:
        cfg = load_train_config(config)
        over = {k: v for k, v in (("store", store), ("out_dir", out_dir)) if v is not None}
        if over:
            cfg = cfg.model_copy(update=over)
        say("resolved config: " + json.dumps(cfg.to_dict(), sort_keys=True))
        with Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[info]}"), console=console, transient=True) as bar:
            task = bar.add_task("epochs", total=cfg.trainer.epochs, info="")
            result = train(cfg, on_epoch=lambda r: bar.update(
                task, advance=1, info=f"val_cosine {r['val_cosine']:.4f} val_loss {r['val_loss']:.4g}"))
    except L2SError as exc:
        fail(exc)
    m = result.metrics
    say(f"run {result.run_id}: val_cosine {m['val_cosine']:.4f} (Mean-S {m['mean_s_cosine']:.4f}, "
        f"gain {m['gain_cosine']:+.4f}), val_mse {m['val_mse']:.4g}, norm ratio {m['norm_ratio']:.3f}, "
        f"{m['val_rows']} validation rows, {result.seconds:.1f} s")
    if m.get("validation_overlaps_test"):
        say(f"warning: {m['validation_overlaps_test']} validation row(s) are test rows (split.validate_on_test = "
            f"true): the kept epoch saw rows that evaluation reports as test")
    say(f"predictor: {result.artifact}")
    say(f"report: l2s report train {result.run_id} --out report-{result.run_id} --store {cfg.store}")


def sweep_cmd(
    config: Path = typer.Argument(..., help="TOML sweep config (see l2s_data/train/configs/tiny-llava-sweep.toml)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address",
                                              help="Join this Ray cluster ('auto', host:port); default: the config's, else a local Ray."),
) -> None:
    """Run a grid or random search of trainings over one cache on Ray Tune.

    Every trial lands in the `runs` table with its sweep id; rank them with
    `l2s sql "SELECT run_id, val_cosine FROM runs WHERE sweep_id = '...' ORDER BY val_cosine DESC"`.
    """
    from l2s_data.train.sweep import draw_trials, load_sweep_config, run_sweep

    try:
        cfg = load_sweep_config(config)
        say(f"sweep {cfg.name}: {len(draw_trials(cfg))} trials, at most {cfg.sweep.max_concurrent} at once")
        res = run_sweep(cfg, base_dir=".", ray_address=ray_address, progress=True)
    except L2SError as exc:
        fail(exc)
    say(f"sweep {res.sweep_id}: {len(res.run_ids)} runs on snapshot {res.snapshot_id}"
        + (f", {len(res.stopped)} stopped early" if res.stopped else ""))
    if res.best_run_id:
        say(f"best: {res.best_run_id} ({cfg.sweep.metric} {res.best_metric:.4f})")
    say(f"report: l2s report sweep {res.sweep_id} --store {cfg.base.get('store')}")


def report_train_cmd(
    run_id: str = typer.Argument(..., help="A run id from the runs table."),
    out: Path = typer.Option(..., "--out", help="Folder for report.md and its PNG plots."),
    store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw the PNG plots (--no-plots: the same "
                               "tables without them; the projection's rows and predictor are not read)."),
) -> None:
    """Report one training run: learning curves, cosine per category, predicted vs P2S (PCA)."""
    from l2s_data.train.report import report_train

    try:
        path = report_train(_store(store), run_id, out, plots=plots)
    except L2SError as exc:
        fail(exc)
    say(f"wrote {path}")


def report_sweep_cmd(
    sweep_id: str = typer.Argument(..., help="A sweep id (runs.sweep_id)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for report.md and its plots (default: report-SWEEP_ID)."),
    store: Optional[str] = typer.Option(None, "--store", "-s", help=_STORE_HELP),
    metric: str = typer.Option("val_cosine", "--metric", help="val_cosine or val_mse."),
) -> None:
    """Report a sweep: its runs ranked, and the metric against each swept knob."""
    from l2s_data.train.report import report_sweep

    try:
        if metric not in ("val_cosine", "val_mse"):
            raise ConfigError(f"--metric {metric!r}: expected val_cosine or val_mse")
        path = report_sweep(_store(store), sweep_id, out or Path(f"report-{sweep_id}"), metric=metric)
    except L2SError as exc:
        fail(exc)
    say(f"wrote {path}")


add_report("train", report_train_cmd)
add_report("sweep", report_sweep_cmd)


def register_top_level(root: typer.Typer) -> None:
    """Mount ``l2s train``, ``l2s sweep`` and the ``l2s report`` group on ``root``."""
    root.command("train")(train_cmd)
    root.command("sweep")(sweep_cmd)
    root.add_typer(report_app, name="report")
