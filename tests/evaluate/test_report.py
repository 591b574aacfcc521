"""Reports: the method x metric table with alpha chosen on the validation part, PNG plots, and
per-category / per-subset bars, for a safety run with the tiny guard and a POPE run."""

from __future__ import annotations

import json
import math

import pytest

from l2s_data.datasets.splits import is_validation
from l2s_data.errors import ConfigError, KeyNotFoundError
from l2s_data.evaluate.metrics import pope_parse, unsafe_scores
from l2s_data.evaluate.report import write_report
from l2s_data.evaluate.results import load_results
from l2s_data.evaluate.run import Evaluation
from l2s_data.models.tiny_guard import make_tiny_guard
from l2s_data.store import Store

from .conftest import eval_config

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def safety_run(world, tmp_path_factory):
    root, ckpt, adapter = world
    guard = make_tiny_guard(tmp_path_factory.mktemp("guard"))
    cfg = eval_config(root, ckpt, steering={"methods": ["none", "prompt-only", "mean-s", "l2s"],
                                            "alphas": [0.0, 2.0, 8.0]},
                      judges={"guard": str(guard)}, run={"name": "rep"})
    Evaluation(cfg, adapter=adapter).run()
    return Store.open(root / "store"), "rep"


def _by_hand(store, run_id):
    """(method, alpha, sample, part, label, scores) straight from SQL, for independent sums."""
    rows = store.sql(f"SELECT e.method, e.alpha, e.sample_id, e.scores_json, m.label FROM evaluations e "
                     f"JOIN memberships m USING (sample_id) WHERE e.run_id = '{run_id}' AND m.split = 'test'").to_pylist()
    for r in rows:
        r["part"] = "validation" if is_validation(r["sample_id"], 0.5) else "test"
        r["scores"] = json.loads(r["scores_json"])
    return rows


def test_the_safety_report_table_uses_alphas_chosen_on_validation(safety_run, tmp_path):
    store, run = safety_run
    files = write_report(store, run, tmp_path / "out")
    for p in (files.markdown, files.html, files.results, *files.plots):
        assert p.is_file() and p.stat().st_size > 0
    for p in files.plots:
        assert p.read_bytes()[:8] == PNG
    names = {p.name for p in files.plots}
    assert {"alpha_desired_rate.png", "alpha_refusal_rate.png", "alpha_unsafe_e50.png",
            "alpha_unsafe_e70.png", "alpha_unsafe_e90.png", "by_category.png"} <= names
    defer = [r for r in _by_hand(store, run) if r["part"] == "test" and r["label"] == "defer"]
    assert ("alpha_ed_score.png" in names) == bool(defer)   # no plot of nothing
    assert files.header[:3] == ["method", "alpha", "desired_rate"] and "unsafe_e90" in files.header
    assert [r[0] for r in files.rows] == ["none", "prompt-only", "Mean-S", "L2S"]

    rows = _by_hand(store, run)
    assert {r["part"] for r in rows} == {"validation", "test"}
    for method in ("mean-s", "l2s"):
        def desired(alpha, part, method=method):
            sel = [r for r in rows if r["method"] == method and r["alpha"] == alpha and r["part"] == part]
            return sum(bool(r["scores"]["desired"]) for r in sel) / len(sel)
        best = max(desired(a, "validation") for a in (0.0, 2.0, 8.0))
        ties = [a for a in (0.0, 2.0, 8.0) if desired(a, "validation") == best]
        assert files.chosen[method] == min(ties, key=abs)
        row = next(r for r in files.rows if r[0] == ("Mean-S" if method == "mean-s" else "L2S"))
        assert row[1] == f"{files.chosen[method]:g}"
        assert float(row[2]) == pytest.approx(desired(files.chosen[method], "test"), abs=5e-4)
        # The Unsafe-score is E_{p>=tau} over the test part's categories to refuse.
        probs = [r["scores"]["unsafe"] for r in rows if r["method"] == method and r["alpha"] == files.chosen[method]
                 and r["part"] == "test" and r["label"] == "refuse"]
        want = unsafe_scores(probs)["unsafe_e50"]
        got = row[files.header.index("unsafe_e50")]
        assert (got == "nan" and math.isnan(want)) or float(got) == pytest.approx(want, abs=5e-4)
    assert files.chosen["none"] is None and files.chosen["prompt-only"] is None
    md = files.markdown.read_text()
    assert "| method | alpha | desired_rate |" in md and "![by_category](by_category.png)" in md
    assert "<table>" in files.html.read_text() and "by_category.png" in files.html.read_text()
    saved = json.loads(files.results.read_text())
    assert saved["chosen_alphas"] == files.chosen and saved["table"]["rows"] == files.rows


def test_an_unknown_run_id_or_select_metric_is_refused(safety_run, tmp_path):
    store, run = safety_run
    with pytest.raises(KeyNotFoundError, match=r"evaluation run 'nope' does not exist in store .*known evaluation "
                                               r"runs: \[.*'rep'"):
        write_report(store, "nope", tmp_path / "x")
    with pytest.raises(KeyNotFoundError, match="not a valid evaluation run id"):
        load_results(store, "a b; DROP")
    with pytest.raises(ConfigError, match="'f1' is not a safety metric"):
        write_report(store, run, tmp_path / "y", select="f1")


def test_a_pope_report_has_both_parses_and_per_subset_bars(tiny_checkpoint, tiny_adapter, tmp_path):
    from l2s_data.datasets import make_synthetic
    from l2s_data.evaluate.config import parse_config

    make_synthetic("shapes-pope", tmp_path / "pope", n=6)
    cfg = parse_config({
        "model": {"path": str(tiny_checkpoint("llava"))},
        "data": {"path": str(tmp_path / "pope"), "task": "pope", "split": "test", "behavior": "pope-yes-no",
                 "validation_fraction": 0.0},
        "steering": {"layer": 1, "methods": ["none", "prompt-only", "p2s"], "alphas": [1.0, 3.0]},
        "generation": {"max_new_tokens": 3, "batch_size": 8},
        "run": {"store": str(tmp_path / "store"), "name": "pope"},
    }, source="(test)")
    ev = Evaluation(cfg, adapter=tiny_adapter("llava"))
    ev.run()
    store = Store.open(tmp_path / "store")
    files = write_report(store, "pope", tmp_path / "out")
    assert files.header == ["method", "alpha", "accuracy", "precision", "recall", "f1", "yes_ratio", "ref_accuracy",
                            "ref_f1", "ref_yes_ratio"]
    assert "by_subset.png" in {p.name for p in files.plots}
    # validation_fraction 0 and two alphas for P2S*: alpha was chosen on the rows shown, and it says so
    assert "alpha was chosen on the test rows" in files.markdown.read_text()
    # Accuracy of the base model by the official parse, recomputed from the joined rows.
    rows = store.sql("SELECT e.response, m.label FROM evaluations e JOIN memberships m USING (sample_id) "
                     "WHERE e.run_id = 'pope' AND e.method = 'none' AND m.split = 'test'").to_pylist()
    acc = sum(pope_parse(r["response"]) == r["label"] for r in rows) / len(rows)
    assert float(files.rows[0][2]) == pytest.approx(acc, abs=5e-4)
    # the summary's n is what that accuracy counts: one row per question and subset (a question in
    # several subsets counts in each), not the distinct sample ids
    ids = store.sql("SELECT DISTINCT sample_id FROM evaluations WHERE run_id = ? AND method = ?", params=["pope", "none"])
    assert files.ns[0] == len(rows) > ids.num_rows
    saved = json.loads(files.results.read_text())
    assert set(saved["by_subset"]) == {"random", "popular", "adversarial"}
    # Per subset, the whole table: the base model's accuracy over that subset's questions.
    for subset, table in saved["tables_by_subset"].items():
        sub = store.sql("SELECT e.response, m.label FROM evaluations e JOIN memberships m USING (sample_id) "
                        f"WHERE e.run_id = 'pope' AND e.method = 'none' AND m.split = 'test' "
                        f"AND m.subset = '{subset}'").to_pylist()
        want = sum(pope_parse(r["response"]) == r["label"] for r in sub) / len(sub)
        assert table[0][0] == "none" and float(table[0][2]) == pytest.approx(want, abs=5e-4)
        assert f"### subset {subset}" in files.markdown.read_text()


def test_a_report_of_a_tiny_random_model_says_so_first_and_shows_n_intervals_and_paired_tests(safety_run, tmp_path):
    from l2s_data.evaluate.stats import mcnemar

    store, run = safety_run
    files = write_report(store, run, tmp_path / "out", n_boot=200, plots=False)  # the first test checks them
    assert files.plots == () and not list((tmp_path / "out").glob("*.png"))
    assert "(written without plots)" in files.markdown.read_text() and "<img" not in files.html.read_text()
    assert files.identity["tiny"] and files.identity["weights"] == "random" and files.identity["fingerprint"]
    md = files.markdown.read_text()
    assert md.index("tiny checkpoint (random weights") < md.index("## Methods")
    assert "TINY RANDOM checkpoint" in md and "tiny checkpoint" in files.html.read_text()
    table = md.split("## Methods")[1].split("Metrics:")[0]
    data_rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert len(data_rows) == 4
    for line in data_rows:
        cells = [c.strip() for c in line.strip("|").split("|")][2:]
        assert cells and all("n=" in c for c in cells), line
    # Paired tests: every steering or prompting method against none, and L2S against Mean-S,
    # each p-value the exact McNemar of the per-sample desired flags computed here from SQL.
    got = {(t["method"], t["against"]): t for t in files.tests}
    assert set(got) == {("prompt-only", "none"), ("Mean-S", "none"), ("L2S", "none"), ("L2S", "Mean-S")}
    rows = [r for r in _by_hand(store, run) if r["part"] == "test" and r["label"] in ("refuse", "defer")]

    def flags(method):
        a = files.chosen[method]
        return {r["sample_id"]: bool(r["scores"].get("desired")) for r in rows
                if r["method"] == method and r["alpha"] == a}

    for (a, b), (ma, mb) in {("L2S", "Mean-S"): ("l2s", "mean-s"), ("Mean-S", "none"): ("mean-s", "none")}.items():
        fa, fb = flags(ma), flags(mb)
        keys = sorted(set(fa) & set(fb))
        want = mcnemar([fa[k] for k in keys], [fb[k] for k in keys])
        assert got[(a, b)]["n"] == len(keys) and got[(a, b)]["p_value"] == pytest.approx(want.p_value)
    assert "p (McNemar)" in md


def test_no_plot_is_written_for_a_metric_without_a_response(world, tmp_path):
    root, ckpt, adapter = world
    cfg = eval_config(root, ckpt, data={"categories": ["01-Illegal_Activitiy"], "validation_fraction": 0.0},
                      steering={"methods": ["none", "mean-s"], "alphas": [1.0]}, run={"name": "refuse-only"})
    Evaluation(cfg, adapter=adapter).run()
    files = write_report(Store.open(root / "store"), "refuse-only", tmp_path / "out", n_boot=50)
    names = {p.name for p in files.plots}
    assert "ref_unsafe_e70" not in files.header       # no guard: no Unsafe column of either kind
    assert "alpha was chosen on the test rows" not in files.markdown.read_text()   # one alpha: nothing chosen
    assert "alpha_ed_score.png" not in names          # no sample to defer: nothing to plot
    assert "alpha_refusal_rate.png" in names
    row = files.rows[0]
    assert row[files.header.index("ed_score")] == "0.000"     # 0 with n = 0, never NaN
    assert "0.000 (n=0)" in files.markdown.read_text()


def _results_with_quality():
    """A safety run's rows built by hand: two steered and two unsteered methods, a judge's quality."""
    from l2s_data.evaluate.results import Results

    rows = []
    for m, alphas in (("none", [None]), ("prompt-only", [None]), ("mean-s", [0.0, 2.0, 8.0]), ("l2s", [0.0, 2.0, 8.0])):
        for a in alphas:
            for i in range(24):
                desired = (i + len(m) + int(a or 0)) % 3 == 0
                scores = {"refusal": desired, "deferral": not desired, "desired": desired, "quality": 1 + (i * 7 + int(a or 0)) % 5}
                rows.append({"method": m, "alpha": a, "sample_id": f"s{i:02d}", "response": "r", "dataset": "d",
                             "scores_json": json.dumps(scores), "subset": None, "question_id": f"q{i}",
                             "category": ["01-Illegal_Activitiy", "10-Legal_Opinion"][i % 2],
                             "label": ["refuse", "defer"][i % 2]})
    return Results("by-hand", {"data": {"task": "safety", "validation_fraction": 0.5}}, rows)


def test_plots_drawn_one_after_another_on_one_figure_are_the_pixels_of_a_fresh_figure(tmp_path):
    # A report draws every metric-against-alpha plot on one reused figure: nothing of a plot
    # (lines, legend, colours, a share's fixed y range) may show in the next one.
    import numpy as np
    from PIL import Image

    from l2s_data.evaluate.plots import AlphaPlots, plot_metric_vs_alpha

    res = _results_with_quality()
    names = ["desired_rate", "quality", "refusal_rate"]   # a share's y range before and after quality's
    assert set(names) <= set(res.metric_names)
    reused = AlphaPlots(res)
    for n in names:
        reused.plot(n, tmp_path / f"reused_{n}.png")
        plot_metric_vs_alpha(res, n, tmp_path / f"fresh_{n}.png")
    for n in names:
        a, b = (np.asarray(Image.open(tmp_path / f"{k}_{n}.png").convert("RGBA")) for k in ("reused", "fresh"))
        assert a.shape == b.shape == (400, 640, 4)
        assert np.array_equal(a, b), n
    # and they differ from one metric to the next (the comparison could fail)
    first, second = (np.asarray(Image.open(tmp_path / f"reused_{n}.png")) for n in names[:2])
    assert not np.array_equal(first, second)


def test_no_text_of_an_alpha_plot_overlaps_another_or_leaves_the_figure(tmp_path):
    # The margins are fixed, not measured per plot: the longest tick labels (a quality mean)
    # and metric names must still fit.
    from l2s_data.evaluate.plots import AlphaPlots

    res = _results_with_quality()
    plots = AlphaPlots(res)
    for name in ("desired_rate", "quality"):
        plots.plot(name, tmp_path / f"{name}.png")
        fig = plots.figure
        ax = fig.axes[0]
        r = fig.canvas.get_renderer()
        ticks = [t.get_window_extent(r) for t in ax.get_yticklabels() if t.get_text()
                 and ax.get_ylim()[0] <= t.get_position()[1] <= ax.get_ylim()[1]]
        xticks = [t.get_window_extent(r) for t in ax.get_xticklabels() if t.get_text()
                  and ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
        ylabel, xlabel, title = (t.get_window_extent(r) for t in (ax.yaxis.label, ax.xaxis.label, ax.title))
        assert ticks and xticks, name
        assert all(not ylabel.overlaps(t) for t in ticks), (name, ylabel, [t.x0 for t in ticks])
        assert all(not xlabel.overlaps(t) for t in xticks), name
        for box in (ylabel, xlabel, title, *ticks, *xticks):
            assert 0 <= box.x0 and box.x1 <= fig.bbox.width and 0 <= box.y0 and box.y1 <= fig.bbox.height, (name, box)
