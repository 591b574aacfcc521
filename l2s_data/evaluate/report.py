"""``l2s report eval RUN --out DIR``: report.md and report.html with the method x metric table
(alpha chosen per method on the validation part), PNG plots of each metric against alpha, and
per-category (safety) or per-subset (POPE) bars.

    files = write_report(store, "eval-1a2b...", "reports/eval")
    files.markdown, files.html, files.plots

Besides the two documents, ``results.json`` holds every number the report shows.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2s_data.evaluate.results import METRICS, Results, fmt_value, load_results, method_label, table_rows

__all__ = ["ReportFiles", "write_report"]

_DESCRIPTIONS = {m.name: m.description for m in METRICS}


@dataclass(frozen=True)
class ReportFiles:
    out_dir: Path
    markdown: Path
    html: Path
    results: Path
    plots: tuple[Path, ...]
    chosen: dict[str, float | None]
    header: list[str]
    rows: list[list[str]]


def _clean(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


def _html_table(header: list[str], rows: list[list[str]]) -> list[str]:
    e = html.escape
    return (["<table>", "<tr>" + "".join(f"<th>{e(c)}</th>" for c in header) + "</tr>"]
            + ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows] + ["</table>"])


def write_report(store: Any, run_id: str, out_dir: str | os.PathLike, *, select: str | None = None) -> ReportFiles:
    """Write the report of evaluation run ``run_id`` into ``out_dir`` (made if absent)."""
    from l2s_data.evaluate.plots import plot_group_bars, plot_metric_vs_alpha

    res: Results = load_results(store, run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = res.choose_alphas(select)
    names = res.metric_names
    header = ["method", "alpha", *names]
    rows = table_rows(res, chosen, names)
    plots = [plot_metric_vs_alpha(res, n, out / f"alpha_{n}.png") for n in names]
    key, bar_metric = ("subset", "accuracy") if res.task == "pope" else ("category", "desired_rate")
    groups = res.by_group(chosen, key, bar_metric)
    plots.append(plot_group_bars(groups, bar_metric, key, out / f"by_{key}.png"))

    cfg, parts = res.config, res.parts()
    select_name = select or ("accuracy" if res.task == "pope" else "desired_rate")
    facts = [
        ("run", run_id), ("store", store.url), ("task", res.task), ("model", cfg.get("model", {}).get("path")),
        ("steered layer L*", cfg.get("steering", {}).get("layer")),
        ("L2S input layer L'", cfg.get("l2s", {}).get("input_layer")),
        ("samples", f"{parts['test']} test, {parts['validation']} validation "
                    f"(validation_fraction {cfg.get('data', {}).get('validation_fraction')})"),
        ("alpha chosen by", f"{select_name} on the {'validation' if parts['validation'] else 'test'} part"),
    ]
    # POPE: the whole table per subset; safety: the bar metric per category and method.
    per_group = {g: table_rows(res, chosen, names, key=key, value=g) for g in groups} if res.task == "pope" else {}
    group_header = [key, *(method_label(m) for m in res.methods)]
    group_rows = [[g, *(fmt_value(v[m]) for m in res.methods)] for g, v in groups.items()]
    all_metrics = {f"{m}@{'-' if a is None else a}": _clean(v) for (m, a), v in res.metrics(part="test").items()}
    results = out / "results.json"
    results.write_text(json.dumps({"run_id": run_id, "task": res.task, "chosen_alphas": chosen,
                                   "table": {"header": header, "rows": rows}, "test_metrics": all_metrics,
                                   f"by_{key}": _clean(groups), f"tables_by_{key}": per_group},
                                  indent=1, sort_keys=True) + "\n")

    md = [f"# Evaluation report: {run_id}", ""]
    md += [f"- {k}: {v}" for k, v in facts]
    md += ["", "## Methods (test part, alpha chosen per method on validation)", ""]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "Metrics:", ""] + [f"- `{n}`: {_DESCRIPTIONS[n]}" for n in names]
    md += ["", "## Metrics against alpha", ""]
    md += [f"![{p.stem}]({p.name})" for p in plots[:-1]]
    md += ["", f"## {bar_metric} per {key}", "", f"![{plots[-1].stem}]({plots[-1].name})", ""]
    md += ["| " + " | ".join(group_header) + " |", "|" + "---|" * len(group_header)]
    md += ["| " + " | ".join(r) + " |" for r in group_rows] + [""]
    for g, t in per_group.items():
        md += [f"### {key} {g}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(r) + " |" for r in t] + [""]
    markdown = out / "report.md"
    markdown.write_text("\n".join(md))

    e = html.escape
    h = ["<!doctype html>", "<html><head><meta charset='utf-8'>", f"<title>Evaluation report: {e(run_id)}</title>",
         "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}</style>",
         "</head><body>", f"<h1>Evaluation report: {e(run_id)}</h1>", "<ul>"]
    h += [f"<li>{e(str(k))}: {e(str(v))}</li>" for k, v in facts]
    h += ["</ul>", "<h2>Methods (test part, alpha chosen per method on validation)</h2>", *_html_table(header, rows)]
    h += ["<ul>"] + [f"<li><code>{e(n)}</code>: {e(_DESCRIPTIONS[n])}</li>" for n in names]
    h += ["</ul>", "<h2>Metrics against alpha</h2>"]
    h += [f"<img src='{e(p.name)}' alt='{e(p.stem)}'>" for p in plots[:-1]]
    h += [f"<h2>{e(bar_metric)} per {e(key)}</h2>", f"<img src='{e(plots[-1].name)}' alt='{e(plots[-1].stem)}'>"]
    h += _html_table(group_header, group_rows)
    for g, t in per_group.items():
        h += [f"<h3>{e(key)} {e(g)}</h3>", *_html_table(header, t)]
    h += ["</body></html>"]
    page = out / "report.html"
    page.write_text("\n".join(h) + "\n")
    return ReportFiles(out, markdown, page, results, tuple(plots), chosen, header, rows)
