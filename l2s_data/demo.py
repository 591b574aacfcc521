"""`l2s demo`: the whole extraction path on a laptop, in about a minute, offline.

1. copy (once, to ``OUT/tiny-llava``) the trained tiny LLaVA shipped with the package (see
   :mod:`l2s_data.trained_tiny`: trained offline on the synthetic sets so that steering
   measurably works; ``l2s models train-tiny`` reproduces it);
2. generate (once) a synthetic-safety data set under ``OUT/data``, half of it held out (test);
3. extract its input / pos / neg / p2s views, every layer, into the store ``OUT/store``, on two
   Ray actors (a local Ray, or the cluster ``RAY_ADDRESS`` names; ``workers=0``: in-process);
4. print a few samples' views (norms), the cosines between categories' mean P2S vectors, and
   an example ``l2s sql`` query;
5. extract again: the store already has every key, so nothing is computed;
6. extract the behaviour-agnostic pair, train an L2S predictor from the cache, and evaluate
   the seven methods on the held-out samples (alpha chosen on their validation part), with a report.

Running ``l2s demo`` a second time reuses the checkpoint, the data set and the store.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from l2s_data.datasets import make_synthetic
from l2s_data.errors import ConfigError
from l2s_data.evaluate import Evaluation, write_report
from l2s_data.evaluate.config import EvalConfig
from l2s_data.evaluate.config import parse_config as parse_eval_config
from l2s_data.evaluate.report import summary_tables
from l2s_data.extract import Extraction, RunReport, parse_config
from l2s_data.extract.distributed import run_extraction
from l2s_data.models.templates import TEMPLATES
from l2s_data.models.tiny import TRAINED_TINY_LLAVA
from l2s_data.models.tiny_guard import make_tiny_guard
from l2s_data.train import load_train_config, train

__all__ = ["DEMO_SQL", "DemoResult", "demo_config", "demo_eval_config", "plain_console", "run_demo"]

#: Categories whose mean P2S vectors the demo compares (harmful x2, two expert-deferral, gov).
_SHOWN = ("01-Illegal_Activitiy", "02-HateSpeech", "10-Legal_Opinion", "11-Financial_Advice",
          "12-Health_Consultation", "13-Gov_Decision")


def demo_sql(layer: int) -> str:
    """Mean stored P2S norm per category: manifests joined with memberships, in the catalog."""
    return ("SELECT m.category, count(DISTINCT k.sample_id) AS samples, round(avg(k.norm), 4) AS mean_p2s_norm "
            "FROM manifests k JOIN memberships m USING (sample_id) "
            f"WHERE k.view = 'p2s' AND k.layer = {layer} GROUP BY m.category ORDER BY m.category")


DEMO_SQL = demo_sql(2)


@dataclass
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
    steering: dict[str, Any] | None = None   # training run, evaluation run, report path and table


def demo_config(out_dir: Path, *, batch_size: int = 8, shard_size: int = 16) -> Any:
    """The demo's extraction config. l2s_data/extract/configs/tiny-llava.toml reads the same model
    and data with the same recipe, into its own store (other splits, shard size and run name)."""
    return parse_config({
        "model": {"path": str(out_dir / "tiny-llava"), "dtype": "float32", "device": "cpu"},
        "data": {"path": str(out_dir / "data")},
        "behavior": {"behavior": "safety-llava"},
        "recipe": {"views": ["input", "pos", "neg", "p2s"], "layers": "all", "store_dtype": "float16",
                   "input_positions": ["prompt_last"], "pair_positions": ["completion_last"]},
        "run": {"store": str(out_dir / "store"), "batch_size": batch_size, "shard_size": shard_size,
                "name": "demo"},  # recipes "demo-input" / "demo-pair", usable in Key(...)
    }, source="(demo)")



def demo_eval_config(out_dir: str | Path, *, layer: int = 2, input_layer: int | None = None,
                     predictor: str | Path | None = None,
                     ba_recipe: str | None = None, guard: str | Path | None = None,
                     alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0), max_new_tokens: int = 16) -> EvalConfig:
    """The evaluation of what ``l2s demo`` builds under ``out_dir`` (tiny LLaVA, synthetic-safety,
    recipes "demo-input" / "demo-pair"), steering layer 2 as the training demo config trains for.
    L2S runs when a ``predictor`` file is given (L' defaults to the file's), Mean-S(BA) when a
    behaviour-agnostic ``ba_recipe`` is, and the Unsafe-score when a ``guard`` is."""
    out = Path(out_dir)
    methods = ["none", "prompt-only", "mean-s"] + (["mean-s-ba"] if ba_recipe else []) + ["norm-rnd"] + \
        (["l2s"] if predictor else []) + ["p2s"]
    return parse_eval_config({
        "model": {"path": str(out / "tiny-llava")},
        "data": {"path": str(out / "data"), "task": "safety", "split": "test", "behavior": "safety-llava"},
        "steering": {"layer": layer, "methods": methods, "alphas": list(alphas)},
        "cache": {"input_recipe": "demo-input", "pair_recipe": "demo-pair", "ba_recipe": ba_recipe or ""},
        "l2s": {"predictor": str(predictor) if predictor else "", "input_layer": input_layer},
        "generation": {"max_new_tokens": max_new_tokens, "batch_size": 8},
        "judges": {"guard": str(guard) if guard else ""},
        "run": {"store": str(out / "store"), "name": "demo-eval"},
    }, source="(demo)")

#: Share of the demo's synthetic-safety samples held out as its test split.
TEST_FRACTION = 0.5


def _prepare(out_dir: Path, n: int, console: Console) -> None:
    ckpt = out_dir / "tiny-llava"
    if (ckpt / "config.json").is_file() and checkpoint_is_current(ckpt) and is_shipped(ckpt):
        console.print(f"[1/7] trained tiny LLaVA checkpoint: cached at {ckpt}")
    else:
        if (ckpt / "config.json").is_file() and (out_dir / "store").exists():
            raise ConfigError(
                f"{out_dir} holds a store built with another checkpoint at {ckpt} (an older demo's random "
                f"one): its runs would be reused for the trained model. Remove {out_dir}, or give another --out."
            )
        ckpt.mkdir(parents=True, exist_ok=True)
        for f in sorted(TRAINED_TINY_LLAVA.iterdir()):
            if f.is_file():
                shutil.copyfile(f, ckpt / f.name)
        console.print(f"[1/7] trained tiny LLaVA checkpoint: copied to {ckpt} (model card: "
                      f"{ckpt / 'model_card.md'})")
    data = out_dir / "data"
    if (data / "samples.parquet").is_file():
        console.print(f"[2/7] synthetic-safety data set: cached at {data}")
    else:
        with console.status("generating the synthetic-safety data set..."):
            make_synthetic("synthetic-safety", data, n=n, test_fraction=TEST_FRACTION)
        console.print(f"[2/7] synthetic-safety data set: {n} samples over 13 scenarios at {data} "
                      f"({TEST_FRACTION:.0%} held out by image)")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_shipped(ckpt: Path) -> bool:
    """Whether ``ckpt`` holds the weights of the trained checkpoint this version ships."""
    mine, shipped = ckpt / "model.safetensors", TRAINED_TINY_LLAVA / "model.safetensors"
    return mine.is_file() and _digest(mine) == _digest(shipped)


def checkpoint_is_current(ckpt: Path) -> bool:
    """Whether a cached tiny checkpoint has this version's chat template (an older one is
    rebuilt: its fingerprint, and so its recipes, differ; the store keeps both)."""
    template = ckpt / "chat_template.jinja"
    return template.is_file() and template.read_text().strip() == TEMPLATES["llava"].strip()


def plain_console() -> Console:
    """The demo's console: paths, ids, queries and SQL are printed verbatim (never markup) and
    never wrapped, so a printed command or path can be copied whole."""
    return Console(markup=False, highlight=False, emoji=False, soft_wrap=True)


def run_demo(out_dir: str | Path = "demo-out", *, n: int = 260, console: Console | None = None,
             workers: int = 2, steer: bool = True, guard: bool = True) -> DemoResult:
    """Run the demo into ``out_dir`` and print as it goes; returns what it printed, as data.

    ``guard=False`` leaves out the Unsafe-score (a tiny *random* guard, whose scores are noise and
    take most of the evaluation's time: 43 of 62 s at the default ``n``)."""
    console = console or plain_console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _prepare(out, n, console)
    cfg = demo_config(out)

    ex = Extraction(cfg)
    where = f"on {workers} Ray worker(s)" if workers else "in this process"
    with console.status(f"extracting (input, pos, neg, p2s at every layer) {where}..."):
        first = run_extraction(ex, workers=workers)
    pl = first.plan
    console.print(f"[3/7] extraction into {first.store}: {pl.total_samples} samples, {pl.total_keys:,} keys; "
                  f"computed {first.computed_samples} sample(s) / {first.written_keys:,} keys in "
                  f"{first.seconds:.1f} s {where}" + (" (the store already had them)" if not first.computed_samples
                                                      else ""))
    for kind, rid in first.recipe_ids.items():
        console.print(f"      {kind} recipe {rid}")

    # The same config again, same model object: the plan finds every key and computes nothing.
    second = Extraction(cfg, adapter=ex.adapter, dataset=ex.dataset).run()
    console.print(f"[4/7] second run of the same config: {second.plan.missing_keys} missing keys, computed "
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
    have = snap.committed_keys(rpair)
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
    result = DemoResult(out, first, second, layer, norms, cats, cos, sql, res)
    if steer:
        result.steering = _steer(out, cfg, ex, console, guard=guard)
    return result


# The layers the demo trains on and steers at: h_X and the P2S target both at layer 2 (L' = L*).
_STEER_LAYER = 2
#: The demo's training runs: a rerun of the demo finds them and trains nothing.
_TRAIN_RUN = "demo-train"
_POPE_TRAIN_RUN = "demo-train-pope"
#: The alphas every steering method is evaluated at (one is chosen on the validation part).
_ALPHAS = (1.0, 2.0, 4.0)
_GEN_BATCH = 128
#: Scenes of the demo's shapes-POPE set (up to 6 questions each, in each of 3 subsets).
POPE_SCENES = 60


def _steer(out: Path, cfg: Any, ex: Extraction, console: Console, *, pope: bool = True,
           guard: bool = True) -> dict[str, Any]:
    """Stages 5-7: behaviour-agnostic pairs, a training, the evaluation of every method, a report."""
    ba_cfg = parse_config({
        "model": cfg.model.model_dump(), "data": cfg.data.model_dump(),
        "behavior": {"behavior": "safety-agnostic"},
        "recipe": {"views": ["pos", "neg", "p2s"], "layers": [_STEER_LAYER], "store_dtype": "float16",
                   "pair_positions": ["completion_last"]},
        "run": {"store": cfg.run.store, "batch_size": cfg.run.batch_size, "shard_size": cfg.run.shard_size,
                "name": "demo-ba"},
    }, source="(demo, behaviour-agnostic)")
    with console.status("extracting the behaviour-agnostic pair (Mean-S(BA))..."):
        ba = Extraction(ba_cfg, adapter=ex.adapter, dataset=ex.dataset).run()
    console.print(f"[5/7] behaviour-agnostic pair \"Harmful\" / \"Safe\": computed {ba.computed_samples} "
                  f"sample(s) in {ba.seconds:.1f} s (recipe demo-ba-pair)")

    tcfg = load_train_config(Path(__file__).parent / "train" / "configs" / "tiny-llava.toml")
    tcfg = tcfg.model_copy(update={"store": cfg.run.store, "out_dir": str(out / "train-runs")})
    store = ex.open_store(create=False)
    done = store.sql("SELECT artifact, metrics_json FROM runs WHERE run_id = ?", params=[_TRAIN_RUN]).to_pylist()
    if done and done[0]["artifact"] and Path(done[0]["artifact"]).is_file():
        artifact, m = Path(done[0]["artifact"]), json.loads(done[0]["metrics_json"] or "{}")
        console.print(f"[6/7] training {_TRAIN_RUN}: already in the store; predictor {artifact}")
    else:
        with console.status("training an L2S predictor from the cache (no base model)..."):
            run = train(tcfg, run_id=_TRAIN_RUN)
        artifact, m = run.artifact, run.metrics
        console.print(f"[6/7] training {run.run_id}: {len(run.history)} epochs in {run.seconds:.1f} s; held-out "
                      f"cosine(prediction, P2S) {m.get('val_cosine', float('nan')):.3f} "
                      f"(Mean-S {m.get('mean_s_cosine', float('nan')):.3f}); predictor {artifact}")

    guard_dir = out / "tiny-guard" if guard else None
    if guard_dir is not None and not (guard_dir / "config.json").is_file():
        make_tiny_guard(guard_dir)
    ecfg = demo_eval_config(out, layer=_STEER_LAYER, input_layer=_STEER_LAYER, predictor=artifact,
                       ba_recipe="demo-ba-pair", guard=guard_dir, alphas=_ALPHAS, max_new_tokens=12)
    ecfg = ecfg.model_copy(update={"generation": ecfg.generation.model_copy(update={"batch_size": _GEN_BATCH})})
    evaluation = Evaluation(ecfg, adapter=ex.adapter)
    with console.status("generating with every method and alpha on the test split..."):
        rep = evaluation.run()
    console.print(f"[7/7] evaluation {rep.run_id}: {rep.computed_rows} new response(s) in {rep.seconds:.1f} s "
                  f"({', '.join(ecfg.steering.methods)})")
    files = write_report(evaluation.store, rep.run_id, out / "report")
    _print_summary(console, files, f"evaluation {rep.run_id} (alpha chosen per method on the validation split)")
    console.print(f"report: {files.markdown} (and {files.html.name}, {len(files.plots)} plots)")
    out_ = {"train_run": _TRAIN_RUN, "eval_run": rep.run_id, "report": files.markdown, "rows": files.rows}
    if pope:
        out_["pope"] = _steer_pope(out, cfg, ex, console)
    return out_


def _steer_pope(out: Path, cfg: Any, ex: Extraction, console: Console) -> dict[str, Any]:
    """The same pipeline on shapes-POPE: extraction, an L2S training, the evaluation, a report."""
    data = out / "pope-data"
    if not (data / "samples.parquet").is_file():
        with console.status("generating the shapes-POPE data set..."):
            make_synthetic("shapes-pope", data, n=POPE_SCENES, test_fraction=TEST_FRACTION)
    pcfg = parse_config({
        "model": cfg.model.model_dump(), "data": {"path": str(data)},
        "behavior": {"behavior": "pope-yes-no"},
        "recipe": {"views": ["input", "pos", "neg", "p2s"], "layers": [_STEER_LAYER], "store_dtype": "float16",
                   "input_positions": ["prompt_last"], "pair_positions": ["completion_last"]},
        "run": {"store": cfg.run.store, "batch_size": 32, "shard_size": 256, "name": "demo-pope"},
    }, source="(demo, shapes-POPE)")
    with console.status("extracting shapes-POPE (input, pos, neg, p2s at the steering layer)..."):
        rep = Extraction(pcfg, adapter=ex.adapter).run()
    console.print(f"[pope 1/3] shapes-POPE ({POPE_SCENES} scenes, yes/no questions): {rep.plan.total_samples} "
                  f"samples, computed {rep.computed_samples} in {rep.seconds:.1f} s (recipes demo-pope-input / "
                  f"demo-pope-pair)")
    tcfg = load_train_config(Path(__file__).parent / "train" / "configs" / "tiny-llava.toml")
    tcfg = tcfg.model_copy(update={
        "store": cfg.run.store, "out_dir": str(out / "train-runs"), "name": "tiny-llava-pope", "task": "pope",
        "input": tcfg.input.model_copy(update={"recipe": "demo-pope-input"}),
        "target": tcfg.target.model_copy(update={"recipe": "demo-pope-pair"}),
        # validation is a hash-chosen share of the training scenes: the held-out scenes are what
        # the evaluation reports, so no epoch is chosen on them
        "split": tcfg.split.model_copy(update={"train_where": "dataset = 'shapes-pope' AND split = 'train'",
                                               "val_where": "",
                                               "test_where": "dataset = 'shapes-pope' AND split = 'test'"}),
    })
    store = ex.open_store(create=False)
    done = store.sql("SELECT artifact FROM runs WHERE run_id = ?", params=[_POPE_TRAIN_RUN]).to_pylist()
    if done and done[0]["artifact"] and Path(done[0]["artifact"]).is_file():
        artifact = Path(done[0]["artifact"])
        console.print(f"[pope 2/3] training {_POPE_TRAIN_RUN}: already in the store; predictor {artifact}")
    else:
        with console.status("training an L2S predictor for POPE from the cache..."):
            run = train(tcfg, run_id=_POPE_TRAIN_RUN)
        artifact = run.artifact
        console.print(f"[pope 2/3] training {run.run_id}: {len(run.history)} epochs in {run.seconds:.1f} s; "
                      f"predictor {artifact}")
    ecfg = parse_eval_config({
        "model": {"path": cfg.model.path},
        "data": {"path": str(data), "task": "pope", "split": "test", "behavior": "pope-yes-no"},
        "steering": {"layer": _STEER_LAYER, "methods": ["none", "prompt-only", "mean-s", "norm-rnd", "l2s", "p2s"],
                     "alphas": list(_ALPHAS)},
        "cache": {"input_recipe": "demo-pope-input", "pair_recipe": "demo-pope-pair"},
        "l2s": {"predictor": str(artifact), "input_layer": _STEER_LAYER},
        "generation": {"max_new_tokens": 4, "batch_size": _GEN_BATCH},
        "run": {"store": cfg.run.store, "name": "demo-eval-pope"},
    }, source="(demo, shapes-POPE)")
    evaluation = Evaluation(ecfg, adapter=ex.adapter)
    with console.status("generating POPE answers with every method and alpha..."):
        rep = evaluation.run()
    console.print(f"[pope 3/3] evaluation {rep.run_id}: {rep.computed_rows} new response(s) in {rep.seconds:.1f} s")
    files = write_report(evaluation.store, rep.run_id, out / "report-pope")
    _print_summary(console, files,
                   f"evaluation {rep.run_id} (shapes-POPE; alpha chosen per method on the validation split)")
    console.print(f"report: {files.markdown}")
    return {"train_run": _POPE_TRAIN_RUN, "eval_run": rep.run_id, "report": files.markdown, "rows": files.rows}


def _print_summary(console: Console, files: Any, title: str) -> None:
    """The report's table on the console, cut into 80-column tables (method, alpha and n in each)
    so that no metric name is cut; intervals and paired tests are in the report files."""
    if files.identity.get("warning"):
        console.print(files.identity["warning"])
    for k, (header, rows) in enumerate(summary_tables(files.header, files.rows, files.ns)):
        t = Table(title=title if k == 0 else None)
        for col in header:
            t.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
        for row in rows:
            t.add_row(*row)
        console.print(t)
