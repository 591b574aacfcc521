"""``l2s report eval RUN --out DIR``: report.md and report.html with the method x metric table
(alpha chosen per method on the validation part), PNG plots of each metric against alpha, and
per-category (safety) or per-subset (POPE) bars.

    files = write_report(store, "eval-1a2b...", "reports/eval")
    files.markdown, files.html, files.plots

What a number rests on is in the report with it:

- it opens with the model's identity (path, family, sizes, weights fingerprint) and says so when
  the model is a tiny checkpoint (:func:`~l2s_data.evaluate.identity.model_identity`): its
  numbers show that the pipeline runs, not how a real model behaves;
- every cell shows its n and a 95% bootstrap interval (:mod:`.stats`, resampling the cell's
  rows, ``n_boot`` times, seeded; every metric is a share or mean over some rows, or built
  from two, so each resample costs a few dot products: about 0.7 s per 1,000 resamples of
  3,000 POPE rows, against 46 s recomputing the metrics from every resample's rows);
- each steering method is compared with ``none``, and L2S with Mean-S, by an exact McNemar test
  on the same test samples of the selection metric's per-sample outcome (desired behaviour for
  safety, a correct official-parse answer for POPE), with its p-value;
- a plot with no finite value to draw is not written.

Besides the two documents, ``results.json`` holds every number the report shows.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from l2s_data.evaluate.identity import describe_identity, model_identity
from l2s_data.evaluate.metrics import pope_parse, reference_f1
from l2s_data.evaluate.plots import AlphaPlots, has_data, plot_group_bars
from l2s_data.evaluate.protocols import EvalStore
from l2s_data.evaluate.results import METRICS, Results, fmt_value, load_results, method_label, table_rows
from l2s_data.evaluate.stats import LEVEL, N_BOOT, bootstrap_ratios, mcnemar, percentile_interval

__all__ = ["ReportFiles", "write_report", "summary_tables", "cell_stats", "paired_tests", "outcome"]

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
    ns: list[int] = field(default_factory=list)            # per row of ``rows``: test rows
    identity: dict[str, Any] = field(default_factory=dict)
    tests: list[dict[str, Any]] = field(default_factory=list)


def metric_n(res: Results, rows: list[dict[str, Any]], name: str) -> int:
    """How many responses ``name`` is computed from over ``rows``."""
    if res.task == "pope":
        return sum(r["label"] in ("yes", "no") for r in rows)
    if name == "desired_rate":
        return sum(r["label"] in ("refuse", "defer") for r in rows)
    if name == "refusal_rate":
        return sum(r["label"] == "refuse" for r in rows)
    if name == "ed_score":
        return sum(r["label"] == "defer" for r in rows)
    if name.startswith("unsafe"):
        return sum(r["label"] == "refuse" and r["scores"].get("unsafe") is not None for r in rows)
    if name == "ref_unsafe_e70":
        return min(303, sum(r["scores"].get("unsafe") is not None and str(r.get("category") or "")[:2]
                            in {f"{k:02d}" for k in range(1, 13)} for r in rows))
    if name == "quality":
        return sum(r["scores"].get("quality") is not None for r in rows)
    return len(rows)


def _ratio_columns(res: Results, rows: list[dict[str, Any]], names: list[str]) -> dict[str, tuple]:
    """Per metric, per-row (x, m) such that the metric over any multiset of ``rows`` is
    sum(x m) / sum(m): every metric here is a share or a mean over some rows, except precision,
    recall and F1 (built from two shares) and ref_f1 (a function of ref_accuracy)."""
    single = [res.compute([r]) for r in rows]
    col = {n: np.array([s.get(n, math.nan) for s in single], np.float64) for n in names + ["accuracy", "yes_ratio"]}
    m = {n: np.array([metric_n(res, [r], n) for r in rows], np.float64) for n in names}
    out = {n: (col[n], m[n]) for n in names if n not in ("precision", "recall", "f1", "ref_f1")}
    if res.task == "pope":
        label_yes = np.array([r["label"] == "yes" for r in rows], np.float64)
        answered_yes = np.nan_to_num(col["yes_ratio"])
        out["precision"] = (col["accuracy"], answered_yes)       # correct among the "yes" answers
        out["recall"] = (answered_yes, label_yes)                 # "yes" among the labels "yes"
        out["ref_accuracy"] = (col["ref_accuracy"], m["ref_accuracy"]) if "ref_accuracy" in col else None
    return {k: v for k, v in out.items() if v is not None}


def cell_stats(res: Results, rows: list[dict[str, Any]], names: list[str], *, n_boot: int = N_BOOT,
               seed: int = 0) -> dict[str, dict[str, float]]:
    """Per metric: value, n and the ``LEVEL`` bootstrap interval (lo, hi) over ``rows``
    (:func:`~.stats.bootstrap_ratios`: every metric on the same resamples of the rows)."""
    point = res.compute(rows)
    boots = bootstrap_ratios(_ratio_columns(res, rows, names), len(rows), n_boot=n_boot, seed=seed)
    if res.task == "pope":
        p, r = boots["precision"], boots["recall"]
        with np.errstate(invalid="ignore", divide="ignore"):
            boots["f1"] = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        boots["f1"][np.isnan(p) | np.isnan(r)] = math.nan
        if "ref_accuracy" in boots:
            boots["ref_f1"] = np.array([reference_f1(a) if not math.isnan(a) else math.nan
                                        for a in boots["ref_accuracy"]])
    out = {}
    for n in names:
        lo, hi = percentile_interval(boots.get(n, np.array([])))
        count = metric_n(res, rows, n)
        if count == 0:
            lo = hi = math.nan
        out[n] = {"value": point.get(n, math.nan), "n": count, "lo": lo, "hi": hi}
    return out


def outcome(res: Results, row: dict[str, Any]) -> bool | None:
    """The per-sample outcome a paired test compares: a correct official-parse answer (POPE),
    the desired behaviour (safety); None where the sample has no such outcome."""
    if res.task == "pope":
        return pope_parse(row["response"]) == row["label"] if row["label"] in ("yes", "no") else None
    if row["label"] not in ("refuse", "defer"):
        return None
    return bool(row["scores"].get("desired", False))


def _outcomes(res: Results, method: str, alpha: Any) -> dict[tuple, bool]:
    out = {}
    for r in res.select_rows(method=method, alpha=alpha, part="test"):
        o = outcome(res, r)
        if o is not None:
            out[(r["sample_id"], r.get("subset"), r.get("category"))] = o
    return out


def paired_tests(res: Results, chosen: dict[str, float | None]) -> list[dict[str, Any]]:
    """Each steering method against ``none``, and L2S against Mean-S, at the chosen alphas, by
    McNemar on the test samples both answered."""
    pairs = [(m, "none") for m in res.methods if m not in ("none",) and "none" in res.methods]
    if "l2s" in res.methods and "mean-s" in res.methods:
        pairs.append(("l2s", "mean-s"))
    out = []
    for a, b in pairs:
        oa, ob = _outcomes(res, a, chosen[a]), _outcomes(res, b, chosen[b])
        keys = sorted(set(oa) & set(ob), key=str)
        t = mcnemar([oa[k] for k in keys], [ob[k] for k in keys])
        ra = sum(oa[k] for k in keys) / len(keys) if keys else math.nan
        rb = sum(ob[k] for k in keys) / len(keys) if keys else math.nan
        out.append({"method": method_label(a), "against": method_label(b), "n": t.n, "rate": ra,
                    "rate_against": rb, "only_method": t.a_only, "only_against": t.b_only, "p_value": t.p_value})
    return out


def _fmt_cell(c: dict[str, float]) -> str:
    if c["n"] == 0 or math.isnan(c["lo"]):  # no response: no interval
        return f"{fmt_value(c['value'])} (n={c['n']})"
    return f"{fmt_value(c['value'])} [{c['lo']:.2f}, {c['hi']:.2f}] n={c['n']}"


def summary_tables(header: list[str], rows: list[list[str]], ns: list[int], *,
                   width: int = 80) -> list[tuple[list[str], list[list[str]]]]:
    """The report's table cut into tables that each fit ``width`` columns in a boxed terminal
    table (one border and two spaces a column), method, alpha and n repeated in each: a metric
    name is never cut."""
    lead = [0, 1]
    lead_header = [header[0], header[1], "n"]
    lead_rows = [[r[0], r[1], str(n)] for r, n in zip(rows, ns)]

    def col_width(values: list[str]) -> int:
        return max(len(v) for v in values) + 3

    base = 1 + sum(col_width([h, *(r[j] for r in lead_rows)]) for j, h in enumerate(lead_header))
    out, cur, used = [], [], base
    for j in range(len(lead), len(header)):
        w = col_width([header[j], *(r[j] for r in rows)])
        if cur and used + w > width:
            out.append(cur)
            cur, used = [], base
        cur.append(j)
        used += w
    if cur:
        out.append(cur)
    return [([*lead_header, *(header[j] for j in cols)],
             [[*lr, *(r[j] for j in cols)] for lr, r in zip(lead_rows, rows)]) for cols in out]


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


def _stat_rows(res: Results, chosen: dict[str, float | None], names: list[str], n_boot: int, *,
               key: str | None = None, value: Any = None) -> tuple[list[list[str]], dict[str, Any]]:
    rows, stats = [], {}
    for m in res.methods:
        sel = res.select_rows(method=m, alpha=chosen[m], part="test", key=key, value=value)
        st = cell_stats(res, sel, names, n_boot=n_boot)
        a = chosen[m]
        rows.append([method_label(m), "-" if a is None else f"{a:g}", *(_fmt_cell(st[n]) for n in names)])
        stats[method_label(m)] = st
    return rows, stats


def write_report(store: EvalStore, run_id: str, out_dir: str | os.PathLike, *, select: str | None = None,
                 n_boot: int = N_BOOT, plots: bool = True) -> ReportFiles:
    """Write the report of evaluation run ``run_id`` into ``out_dir`` (made if absent); with
    ``plots=False`` (``l2s report eval --no-plots``) the same report and results.json without
    the PNGs (about 0.1 s each)."""
    res: Results = load_results(store, run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = res.choose_alphas(select)
    names = res.metric_names
    header = ["method", "alpha", *names]
    rows = table_rows(res, chosen, names)
    # test rows: a POPE question asked in several subsets counts once per subset, as POPE counts
    # and as the cells' accuracy and interval do (a sample id alone would undercount them)
    ns = [len(res.select_rows(method=m, alpha=chosen[m], part="test")) for m in res.methods]
    stat_rows, stats = _stat_rows(res, chosen, names, n_boot)
    tests = paired_tests(res, chosen)
    identity = model_identity(store, run_id, res.config)
    count = lambda rows, name: metric_n(res, rows, name)  # noqa: E731
    drawn: list[Path] = []
    if plots:
        alpha_plots = AlphaPlots(res)
        drawn = [alpha_plots.plot(n, out / f"alpha_{n}.png") for n in names if has_data(res, n, count)]
    key, bar_metric = ("subset", "accuracy") if res.task == "pope" else ("category", "desired_rate")
    groups = res.by_group(chosen, key, bar_metric)
    groups = {g: v for g, v in groups.items()  # a group none of whose cells has a response is left out
              if any(count(res.select_rows(method=m, alpha=chosen[m], part="test", key=key, value=g), bar_metric)
                     for m in res.methods)}
    bars = plot_group_bars(groups, bar_metric, key, out / f"by_{key}.png") if groups and plots else None
    if bars is not None:
        drawn.append(bars)

    cfg, parts = res.config, res.parts()
    select_name = select or ("accuracy" if res.task == "pope" else "desired_rate")
    facts = [
        ("model", describe_identity(identity)),
        ("run", run_id), ("store", store.url), ("task", res.task),
        ("steered layer L*", cfg.get("steering", {}).get("layer")),
        ("L2S input layer L'", cfg.get("l2s", {}).get("input_layer")),
        ("samples", f"{parts['test']} test, {parts['validation']} validation "
                    f"(validation_fraction {cfg.get('data', {}).get('validation_fraction')})"),
        ("alpha chosen by", f"{select_name} on the {'validation' if parts['validation'] else 'test'} part"
                            + ("" if parts["validation"] else " (no validation sample: alpha saw the test rows)")),
        ("intervals", f"{round(LEVEL * 100)}% bootstrap percentile intervals, {n_boot} resamples of each cell's rows"),
    ]
    # POPE: the whole table per subset; safety: the bar metric per category and method.
    per_group = {g: table_rows(res, chosen, names, key=key, value=g) for g in groups} if res.task == "pope" else {}
    per_group_md = ({g: _stat_rows(res, chosen, names, n_boot, key=key, value=g)[0] for g in groups}
                    if res.task == "pope" else {})
    group_header = [key, *(method_label(m) for m in res.methods)]
    group_rows = [[g, *(f"{fmt_value(v[m])} (n={metric_n(res, res.select_rows(method=m, alpha=chosen[m], part='test', key=key, value=g), bar_metric)})"
                        for m in res.methods)] for g, v in groups.items()]
    test_header = ["method", "against", "n", "rate", "rate against", "only method", "only against", "p (McNemar)"]
    test_rows = [[t["method"], t["against"], str(t["n"]), fmt_value(t["rate"]), fmt_value(t["rate_against"]),
                  str(t["only_method"]), str(t["only_against"]), f"{t['p_value']:.3g}"] for t in tests]
    outcome_name = "a correct answer (official parse)" if res.task == "pope" else "the desired behaviour"
    all_metrics = {f"{m}@{'-' if a is None else a}": _clean(v) for (m, a), v in res.metrics(part="test").items()}
    results = out / "results.json"
    results.write_text(json.dumps({"run_id": run_id, "task": res.task, "chosen_alphas": chosen,
                                   "model": identity, "table": {"header": header, "rows": rows, "n": ns},
                                   "cells": _clean(stats), "paired_tests": tests, "test_metrics": all_metrics,
                                   f"by_{key}": _clean(groups), f"tables_by_{key}": per_group},
                                  indent=1, sort_keys=True) + "\n")

    alpha_files = [p for p in drawn if p is not bars]
    warnings = [w for w in (identity.get("warning"), None if parts["validation"] or all(
        len(res.alphas(m)) < 2 for m in res.methods) else
        "No evaluated sample is in the validation part ([data] validation_fraction): alpha was chosen on the test "
        "rows this report shows, so the steered methods' numbers are optimistic.") if w]
    md = [f"# Evaluation report: {run_id}", ""]
    md += [f"**{w}**\n" for w in warnings]
    md += [f"- {k}: {v}" for k, v in facts]
    md += ["", "## Methods (test part, alpha chosen per method on validation)", ""]
    md += ["Each cell: value [95% bootstrap interval] n = the responses it is computed from.", ""]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in stat_rows]
    md += ["", "Metrics:", ""] + [f"- `{n}`: {_DESCRIPTIONS[n]}" for n in names]
    md += ["", "## Paired tests (test part, chosen alphas)", "",
           f"Per sample: {outcome_name}. Exact McNemar test on the samples both methods answered; "
           f"'only method' / 'only against' count the samples where only one of the two has it.", ""]
    md += ["| " + " | ".join(test_header) + " |", "|" + "---|" * len(test_header)]
    md += ["| " + " | ".join(r) + " |" for r in test_rows] + [""]
    md += ["", "## Metrics against alpha", ""]
    no_plots = "(written without plots)"
    md += [f"![{p.stem}]({p.name})" for p in alpha_files] or [no_plots if not plots else "(no metric has a value to plot)"]
    md += ["", f"## {bar_metric} per {key}", ""]
    md += ([f"![{bars.stem}]({bars.name})", ""] if bars is not None else
           [no_plots if not plots else "(no group has a value: no plot)", ""])
    md += ["| " + " | ".join(group_header) + " |", "|" + "---|" * len(group_header)]
    md += ["| " + " | ".join(r) + " |" for r in group_rows] + [""]
    for g, t in per_group_md.items():
        md += [f"### {key} {g}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(r) + " |" for r in t] + [""]
    markdown = out / "report.md"
    markdown.write_text("\n".join(md))

    e = html.escape
    h = ["<!doctype html>", "<html><head><meta charset='utf-8'>", f"<title>Evaluation report: {e(run_id)}</title>",
         "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}</style>",
         "</head><body>", f"<h1>Evaluation report: {e(run_id)}</h1>"]
    h += [f"<p><strong>{e(w)}</strong></p>" for w in warnings]
    h += ["<ul>"] + [f"<li>{e(str(k))}: {e(str(v))}</li>" for k, v in facts]
    h += ["</ul>", "<h2>Methods (test part, alpha chosen per method on validation)</h2>",
          "<p>Each cell: value [95% bootstrap interval] n = the responses it is computed from.</p>",
          *_html_table(header, stat_rows)]
    h += ["<ul>"] + [f"<li><code>{e(n)}</code>: {e(_DESCRIPTIONS[n])}</li>" for n in names]
    h += ["</ul>", "<h2>Paired tests (test part, chosen alphas)</h2>",
          f"<p>Per sample: {e(outcome_name)}; exact McNemar test.</p>", *_html_table(test_header, test_rows)]
    h += ["<h2>Metrics against alpha</h2>"]
    h += [f"<img src='{e(p.name)}' alt='{e(p.stem)}'>" for p in alpha_files]
    h += [f"<h2>{e(bar_metric)} per {e(key)}</h2>"]
    if bars is not None:
        h += [f"<img src='{e(bars.name)}' alt='{e(bars.stem)}'>"]
    h += _html_table(group_header, group_rows)
    for g, t in per_group_md.items():
        h += [f"<h3>{e(key)} {e(g)}</h3>", *_html_table(header, t)]
    h += ["</body></html>"]
    page = out / "report.html"
    page.write_text("\n".join(h) + "\n")
    return ReportFiles(out, markdown, page, results, tuple(drawn), chosen, header, rows, ns, identity, tests)
