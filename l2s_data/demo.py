"""`l2s demo`: the whole extraction path on a laptop, in about a minute, offline.

1. build (once, cached under ``OUT/tiny-llava``) a tiny random LLaVA checkpoint;
2. generate (once) a small synthetic-safety data set under ``OUT/data``;
3. extract its input / pos / neg / p2s views, every layer, into the store ``OUT/store``;
4. print a few samples' views (norms), the cosines between categories' mean P2S vectors, and
   an example ``l2s sql`` query;
5. extract again: the store already has every key, so nothing is computed.

Running ``l2s demo`` a second time reuses the checkpoint, the data set and the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from l2s_data.extract import Extraction, RunReport, parse_config

__all__ = ["DEMO_SQL", "DemoResult", "demo_config", "run_demo"]

#: Categories whose mean P2S vectors the demo compares (harmful x2, two expert-deferral, gov).
_SHOWN = ("01-Illegal_Activitiy", "02-HateSpeech", "10-Legal_Opinion", "11-Financial_Advice",
          "12-Health_Consultation", "13-Gov_Decision")


def demo_sql(layer: int) -> str:
    """Mean stored P2S norm per category: manifests joined with memberships, in the catalog."""
    return ("SELECT m.category, count(DISTINCT k.sample_id) AS samples, round(avg(k.norm), 4) AS mean_p2s_norm "
            "FROM manifests k JOIN memberships m USING (sample_id) "
            f"WHERE k.view = 'p2s' AND k.layer = {layer} GROUP BY m.category ORDER BY m.category")


DEMO_SQL = demo_sql(2)


@dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    first: RunReport
    second: RunReport
    layer: int
    norms: list[dict[str, Any]]          # per shown sample: category, query, norms by view
    categories: list[str]
    cosines: np.ndarray                  # [C, C] cosine of categories' mean P2S vectors
    sql: str
    sql_result: Any                      # pa.Table


def demo_config(out_dir: Path, *, batch_size: int = 8, shard_size: int = 16) -> Any:
    """The demo's extraction config (the same as l2s_data/extract/configs/tiny-llava.toml)."""
    return parse_config({
        "model": {"path": str(out_dir / "tiny-llava"), "dtype": "float32", "device": "cpu"},
        "data": {"path": str(out_dir / "data")},
        "behavior": {"behavior": "safety-llava"},
        "recipe": {"views": ["input", "pos", "neg", "p2s"], "layers": "all", "store_dtype": "float16",
                   "input_positions": ["prompt_last"], "pair_positions": ["completion_last"]},
        "run": {"store": str(out_dir / "store"), "batch_size": batch_size, "shard_size": shard_size,
                "name": "demo"},  # recipes "demo-input" / "demo-pair", usable in Key(...)
    }, source="(demo)")


def _prepare(out_dir: Path, n: int, console: Console) -> None:
    from l2s_data.datasets import make_synthetic
    from l2s_data.models import make_tiny

    ckpt = out_dir / "tiny-llava"
    if (ckpt / "config.json").is_file() and checkpoint_is_current(ckpt):
        console.print(f"[1/4] tiny LLaVA checkpoint: cached at {ckpt}")
    else:
        with console.status("building a tiny random LLaVA checkpoint..."):
            make_tiny("llava", ckpt)
        console.print(f"[1/4] tiny LLaVA checkpoint: built at {ckpt}")
    data = out_dir / "data"
    if (data / "samples.parquet").is_file():
        console.print(f"[2/4] synthetic-safety data set: cached at {data}")
    else:
        with console.status("generating the synthetic-safety data set..."):
            make_synthetic("synthetic-safety", data, n=n)
        console.print(f"[2/4] synthetic-safety data set: {n} samples over 13 scenarios at {data}")


def checkpoint_is_current(ckpt: Path) -> bool:
    """Whether a cached tiny checkpoint has this version's chat template (an older one is
    rebuilt: its fingerprint, and so its recipes, differ; the store keeps both)."""
    from l2s_data.models.templates import TEMPLATES

    template = ckpt / "chat_template.jinja"
    return template.is_file() and template.read_text().strip() == TEMPLATES["llava"].strip()


def run_demo(out_dir: str | Path = "demo-out", *, n: int = 26, console: Console | None = None) -> DemoResult:
    """Run the demo into ``out_dir`` and print as it goes; returns what it printed, as data."""
    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _prepare(out, n, console)
    cfg = demo_config(out)

    ex = Extraction(cfg)
    with console.status("extracting (input, pos, neg, p2s at every layer)..."):
        first = ex.run()
    pl = first.plan
    console.print(f"[3/4] extraction into {first.store}: {pl.total_samples} samples, {pl.total_keys:,} keys; "
                  f"computed {first.computed_samples} sample(s) / {first.written_keys:,} keys in "
                  f"{first.seconds:.1f} s" + (" (the store already had them)" if not first.computed_samples else ""))
    for kind, rid in first.recipe_ids.items():
        console.print(f"      {kind} recipe {rid}")

    # The same config again, same model object: the plan finds every key and computes nothing.
    second = Extraction(cfg, adapter=ex.adapter, dataset=ex.dataset).run()
    console.print(f"[4/4] second run of the same config: {second.plan.missing_keys} missing keys, computed "
                  f"{second.computed_samples} sample(s) in {second.seconds:.1f} s: "
                  + ("nothing to compute, every key is already in the store"
                     if second.computed_samples == 0 else "UNEXPECTED: it recomputed"))

    store = ex.open_store(create=False)
    layer = max(ex.recipes["pair"].layers) - 1 if len(ex.recipes["pair"].layers) > 1 else ex.recipes["pair"].layers[0]
    rin, rpair = first.recipe_ids["input"], first.recipe_ids["pair"]
    samples, mem = ex.selection
    cat_of = dict(zip(mem["sample_id"].to_pylist(), mem["category"].to_pylist()))
    query_of = dict(zip(samples["sample_id"].to_pylist(), samples["query"].to_pylist()))
    snap = store.snapshot()
    have = store.committed_keys(rpair)
    ids = sorted(set(have["sample_id"].to_pylist()) & set(cat_of))
    p2s = snap.read(rpair, "p2s", "completion_last", layer, ids)  # float32 [n, D]

    shown: list[str] = []
    for cat in _SHOWN:
        sid = next((s for s in ids if cat_of[s] == cat), None)
        if sid and len(shown) < 4:
            shown.append(sid)
    views = {"input": snap.read(rin, "input", "prompt_last", layer, shown)}
    for v in ("pos", "neg", "p2s"):
        views[v] = snap.read(rpair, v, "completion_last", layer, shown)
    t = Table(title=f"views of {len(shown)} samples at layer {layer} (L2 norms; input at prompt_last, "
                    f"pos/neg/p2s at completion_last)")
    t.add_column("sample", no_wrap=True)
    t.add_column("category", no_wrap=True, max_width=16, overflow="ellipsis")
    for col in ("|input|", "|pos|", "|neg|", "|p2s|", "|pos-neg| fp16"):
        t.add_column(col, justify="right")
    norms = []
    for i, sid in enumerate(shown):
        row = {v: float(np.linalg.norm(views[v][i])) for v in views}
        row["pos-neg"] = float(np.linalg.norm(views["pos"][i] - views["neg"][i]))
        norms.append({"sample_id": sid, "category": cat_of[sid], "query": query_of[sid], **row})
        t.add_row(sid[:8], cat_of[sid], *(f"{row[k]:.4f}" for k in ("input", "pos", "neg", "p2s", "pos-neg")))
    console.print(t)
    for n_ in norms:
        console.print(f"  {n_['sample_id'][:8]}: {n_['query']!r}")
    console.print("p2s is pos - neg taken in float32 before the float16 down-cast; |pos-neg| recomputes it "
                  "from the stored float16 rows.")

    cats = [c for c in _SHOWN if any(cat_of[s] == c for s in ids)]
    means = np.stack([p2s[[i for i, s in enumerate(ids) if cat_of[s] == c]].mean(0) for c in cats])
    unit = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    cos = unit @ unit.T
    ct = Table(title=f"cosine between categories' mean P2S vectors (layer {layer})")
    ct.add_column("")
    for c in cats:
        ct.add_column(c[:2])
    for i, c in enumerate(cats):
        ct.add_row(c, *(f"{cos[i, j]:+.3f}" for j in range(len(cats))))
    console.print(ct)

    sql = demo_sql(layer)
    res = store.sql(sql)
    console.print(f"example query, as a command:\n  l2s sql --store {cfg.run.store} \"{sql}\"")
    st = Table(title="result")
    for name in res.column_names:
        st.add_column(name)
    for r in res.to_pylist():
        st.add_row(*(str(r[k]) for k in res.column_names))
    console.print(st)
    return DemoResult(out, first, second, layer, norms, cats, cos, sql, res)
