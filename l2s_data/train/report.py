"""Reports of runs and sweeps: ``report.md`` with PNG plots, from the store's ``runs`` table.

- :func:`report_train`: learning curves (train / validation loss, validation cosine per epoch),
  cosine per category against Mean-S, and a 2-D projection (PCA) of the predicted and the P2S
  vectors of the validation rows, coloured by category.
- :func:`report_sweep`: the sweep's runs ranked, and the metric against each swept knob.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from l2s_data.errors import PredictorMismatchError, RunNotFoundError
from l2s_data.figures import agg_figure
from l2s_data.steer.predictor import load_predictor
from l2s_data.steer.selection import query
from l2s_data.train.config import parse_train_config
from l2s_data.train.data import load_data
from l2s_data.train.evaluate import predict

__all__ = ["get_run", "sweep_runs", "report_train", "report_sweep"]


def get_run(store, run_id: str) -> dict[str, Any]:
    """The ``runs`` row of ``run_id`` as a dict (config and metrics parsed)."""
    t = query(store, "SELECT * FROM runs WHERE run_id = ?", [run_id])
    if t.num_rows == 0:
        recent = store.sql("SELECT run_id FROM runs ORDER BY created_at DESC LIMIT 5")["run_id"].to_pylist()
        raise RunNotFoundError(
            f"run {run_id!r} is not in the runs table of store {store.url}; "
            + (f"recent runs: {recent}. " if recent else "the store has no runs yet (`l2s train CONFIG`). ")
            + "List them with `l2s sql \"SELECT run_id, kind, val_cosine FROM runs ORDER BY created_at DESC\"`."
        )
    row = t.to_pylist()[0]
    row["config"] = json.loads(row["config_json"])
    row["metrics"] = json.loads(row["metrics_json"] or "{}")
    return row


def sweep_runs(store, sweep_id: str) -> list[dict[str, Any]]:
    t = query(store, "SELECT * FROM runs WHERE sweep_id = ? ORDER BY run_id", [sweep_id])
    if t.num_rows == 0:
        known = store.sql("SELECT DISTINCT sweep_id FROM runs WHERE sweep_id IS NOT NULL ORDER BY 1")
        raise RunNotFoundError(
            f"sweep {sweep_id!r} has no runs in store {store.url}; sweeps there: "
            f"{known['sweep_id'].to_pylist() or 'none (`l2s sweep CONFIG`)'}."
        )
    rows = t.to_pylist()
    for r in rows:
        r["config"] = json.loads(r["config_json"])
        r["metrics"] = json.loads(r["metrics_json"] or "{}")
    return rows


def _pca2(a: np.ndarray) -> np.ndarray:
    c = a - a.mean(axis=0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    return c @ vt[:2].T if vt.shape[0] >= 2 else np.c_[c @ vt[:1].T, np.zeros(len(c))]


def _projection(store, run: dict[str, Any], path: Path) -> str:
    if not run.get("artifact"):
        return "No predictor was saved for this run (stopped early), so there is no projection."
    try:
        model, meta = load_predictor(run["artifact"])
    except PredictorMismatchError as exc:
        return f"The predictor could not be loaded ({exc}), so there is no projection."
    cfg = parse_train_config(run["config"], source=f"run {run['run_id']}")
    data = load_data(cfg, store)
    val = data.val
    target = val.columns[1] * np.array([meta.target_scales.get(c, 1.0) for c in val.categories],
                                       np.float32)[:, None]
    pred = predict(model, val.columns[0])
    xy = _pca2(np.concatenate([target, pred]))
    n = len(val)
    from matplotlib import colormaps

    fig = agg_figure(figsize=(7, 5.5))
    ax = fig.subplots()
    cats = sorted({str(c) for c in val.categories})
    cmap = colormaps["tab20"].resampled(max(len(cats), 1))
    for i, c in enumerate(cats):
        m = np.array([str(v) == c for v in val.categories])
        ax.scatter(xy[:n][m, 0], xy[:n][m, 1], marker="o", color=cmap(i), label=c, alpha=0.8)
        ax.scatter(xy[n:][m, 0], xy[n:][m, 1], marker="x", color=cmap(i))
    ax.set_title("validation rows: P2S (o) and predicted (x), PCA of both", y=1.0)  # placed: not measured per draw
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    note = "" if data.snapshot_id == run["snapshot_id"] else (
        f" The store has changed since training (snapshot {data.snapshot_id}, trained on {run['snapshot_id']}).")
    return f"![projection]({path.name})\n\nCircles: stored P2S vectors; crosses: predictions.{note}"


def _validation_line(config: dict, final: dict) -> str:
    """Where the validation rows (which chose the epoch, and rank sweeps) came from."""
    sp = config.get("split", {})
    overlap = final.get("validation_overlaps_test") or 0
    if sp.get("val_where", "").strip():
        where = f"validation rows: `{sp['val_where']}`"
    else:
        where = (f"validation rows: training rows, {sp.get('val_rule', 'hash_share')} "
                 f"{sp.get('val_fraction')} of `{sp.get('train_where')}`")
    if overlap:
        where += (f"; **{overlap} of them are test rows (`{sp.get('test_where')}`), allowed by "
                  f"validate_on_test: the epoch chosen and any sweep ranking saw test rows**")
    return where + f"; kept epoch: {final.get('kept_epoch')}"


def _learning_curves(hist: list[dict[str, Any]], final: dict[str, Any], path: Path) -> None:
    fig = agg_figure(figsize=(10, 4))
    a1, a2 = fig.subplots(1, 2)
    ep = [h["epoch"] for h in hist]
    a1.plot(ep, [h["train_loss"] for h in hist], label="train loss")
    a1.plot(ep, [h["val_loss"] for h in hist], label="validation loss")
    a1.set_xlabel("epoch")
    a1.legend()
    a2.plot(ep, [h["val_cosine"] for h in hist], label="validation cosine", color="C2")
    if "mean_s_cosine" in final:
        a2.axhline(final["mean_s_cosine"], ls="--", color="gray", label="Mean-S")
    a2.set_xlabel("epoch")
    a2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _category_bars(per: dict[str, dict[str, float]], path: Path) -> None:
    cats = sorted(per)
    fig = agg_figure(figsize=(max(6, 0.6 * len(cats)), 4))
    ax = fig.subplots()
    x = np.arange(len(cats))
    ax.bar(x - 0.2, [per[c]["cosine"] for c in cats], 0.4, label="predictor")
    ax.bar(x + 0.2, [per[c]["mean_s_cosine"] for c in cats], 0.4, label="Mean-S")
    ax.set_xticks(x, cats, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("cosine to P2S")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report_train(store, run_id: str, out_dir: str | Path, *, plots: bool = True) -> Path:
    """Write ``out_dir/report.md`` and its PNGs for one run; returns the report's path. With
    ``plots=False`` (``l2s report train --no-plots``) the same tables without the PNGs, and
    without the projection's reading of the validation rows and the predictor."""
    run = get_run(store, run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hist = run["metrics"].get("history", [])
    final = run["metrics"].get("final", {})
    if plots:
        _learning_curves(hist, final, out / "learning_curves.png")

    per = final.get("per_category", {})
    lines = [f"# Run {run_id}", "",
             f"- kind: {run['kind']}, status: {run['status']}" + (f", sweep: {run['sweep_id']}" if run["sweep_id"] else ""),
             f"- snapshot: `{run['snapshot_id']}`; recipes: {', '.join(run['recipe_ids'])}",
             f"- input: {run['config']['input']}", f"- target: {run['config']['target']}",
             f"- predictor: `{run['artifact']}`", f"- {_validation_line(run['config'], final)}", "",
             "## Offline evaluation (validation rows)", "",
             "| metric | value |", "|---|---:|"]
    for k, v in final.items():
        if isinstance(v, (int, float)):
            lines.append(f"| {k} | {v:.6g} |")
    no_plots = "(written without plots)"
    lines += ["", "## Learning curves", "", "![learning curves](learning_curves.png)" if plots else no_plots, ""]
    if per:
        cats = sorted(per)
        if plots:
            _category_bars(per, out / "category_cosine.png")
        lines += ["## Cosine per category", "", "![cosine per category](category_cosine.png)" if plots else no_plots,
                  "", "| category | rows | predictor | Mean-S |", "|---|---:|---:|---:|"]
        lines += [f"| {c} | {per[c]['rows']} | {per[c]['cosine']:.4f} | {per[c]['mean_s_cosine']:.4f} |" for c in cats]
        lines.append("")
    lines += ["## Predicted vs P2S vectors", "", _projection(store, run, out / "projection.png") if plots else no_plots,
              ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _knob_values(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    knobs: dict[str, list[Any]] = {}
    for r in rows:
        for k, v in r["metrics"].get("final", {}).get("sweep_params", {}).items():
            knobs.setdefault(k, []).append(v)
    return {k: v for k, v in knobs.items() if len(v) == len(rows)}


def report_sweep(store, sweep_id: str, out_dir: str | Path, *, metric: str = "val_cosine") -> Path:
    """Write ``out_dir/report.md``: the runs ranked and ``metric`` against each swept knob."""
    rows = sweep_runs(store, sweep_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    knobs = _knob_values(rows)
    vals = np.array([np.nan if r[metric] is None else r[metric] for r in rows], float)
    ranked_on = sorted({_validation_line(r.get("config") or {}, r["metrics"].get("final", {})).split("; kept epoch")[0]
                        for r in rows})
    lines = [f"# Sweep {sweep_id}", "", f"{len(rows)} runs; snapshot(s): "
             f"{', '.join(sorted({str(r['snapshot_id']) for r in rows}))}", "",
             *(f"- ranked on {v}" for v in ranked_on), "",
             "| run | status | " + " | ".join(knobs) + f" | {metric} |",
             "|---|---|" + "---|" * len(knobs) + "---:|"]
    order = np.argsort(-np.nan_to_num(vals, nan=-np.inf) if metric == "val_cosine" else np.nan_to_num(vals, nan=np.inf))
    for i in order:
        r = rows[i]
        lines.append(f"| {r['run_id']} | {r['status']} | " + " | ".join(str(knobs[k][i]) for k in knobs)
                     + f" | {vals[i]:.5g} |")
    lines.append("")
    for k, v in knobs.items():
        fig = agg_figure(figsize=(5, 3.5))
        ax = fig.subplots()
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        levels = sorted(set(v), key=lambda x: (str(type(x)), x))
        xs = np.array(v, float) if numeric else np.array([levels.index(x) for x in v], float)
        ax.scatter(xs, vals, alpha=0.7)
        means = [np.nanmean(vals[[j for j, x in enumerate(v) if x == lev]]) for lev in levels]
        lx = np.array(levels, float) if numeric else np.arange(len(levels), dtype=float)
        ax.plot(lx, means, "-", color="C1", label="mean")
        if numeric and all(x > 0 for x in v) and max(v) / min(v) >= 20:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(lx, [str(x) for x in levels])
        ax.set_xlabel(k)
        ax.set_ylabel(metric)
        ax.legend()
        fig.tight_layout()
        name = f"{metric}_vs_{k.replace('.', '_')}.png"
        fig.savefig(out / name, dpi=110)
        lines += [f"## {metric} against {k}", "", f"![{k}]({name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
