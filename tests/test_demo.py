"""`l2s demo` runs from nothing, prints the views, and a second run computes nothing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from l2s_data.demo import demo_eval_config
from l2s_data.store import Store


@pytest.mark.slow
def test_the_demo_runs_end_to_end_and_its_second_run_computes_nothing(demo):
    res, out = demo.result, demo.printed  # run_demo(out, n=demo.n, workers=0, guard=False)
    assert res.first.computed_samples == demo.n and res.first.quarantined == 0
    assert res.second.computed_samples == 0 and res.second.plan.missing_keys == 0
    assert "nothing to compute" in out and "cosine between categories" in out
    assert "in this process" in out  # on Ray: test_the_demo_extracts_on_ray_as_make_demo_does
    ext = Store.open(demo.out / "store").sql("SELECT * FROM _extractions").to_pylist()
    assert [(r["workers"], r["samples_computed"]) for r in ext] == [(0, demo.n)]
    # p2s norms were taken in float32 and are non-zero; the cosine matrix is a real one
    assert all(r["p2s"] > 0 for r in res.norms) and len(res.norms) == 4
    c = len(res.categories)
    assert res.cosines.shape == (c, c) and np.allclose(np.diag(res.cosines), 1.0, atol=1e-5)
    assert res.sql_result.num_rows == 13 and set(res.sql_result.column_names) >= {"category", "mean_p2s_norm"}
    # the rest of the pipeline: a training from the cache, seven methods evaluated, a report
    st = res.steering
    assert [r[0] for r in st["rows"]] == ["none", "prompt-only", "Mean-S", "Mean-S(BA)", "Norm-Rnd", "L2S", "P2S*"]
    assert st["report"].is_file() and st["report"].with_suffix(".html").is_file()
    runs = Store.open(demo.out / "store").sql(
        "SELECT count(*) AS n FROM runs WHERE run_id = ?", params=[st["train_run"]])["n"][0].as_py()
    assert runs == 1
    evals = Store.open(demo.out / "store").sql(
        "SELECT count(DISTINCT method) AS m FROM evaluations WHERE run_id = ?", params=[st["eval_run"]])["m"][0].as_py()
    assert evals == 7
    assert "report: " in out and "[7/7] evaluation" in out

    # a second `l2s demo` reuses the checkpoint, the data and the store: nothing computed at all
    buf2 = io.StringIO()
    from l2s_data.demo import run_demo

    again = run_demo(demo.out, n=demo.n, console=Console(file=buf2, width=120), workers=0, guard=False)
    assert again.first.computed_samples == 0 and "cached" in buf2.getvalue()
    assert "evaluation demo-eval: 0 new response(s)" in buf2.getvalue()  # every row was committed


@pytest.mark.slow
def test_the_demo_extracts_on_ray_as_make_demo_does(ray_address, tmp_path):
    """`make demo` extracts on two Ray workers (here the session's head, through RAY_ADDRESS), and
    records them; the stages after the extraction are the in-process demo's (test above)."""
    from l2s_data.demo import run_demo

    buf = io.StringIO()
    res = run_demo(tmp_path / "demo-out", n=13, console=Console(file=buf, width=120), steer=False)
    assert "on 2 Ray worker(s)" in buf.getvalue()
    assert res.first.computed_samples == 13 and res.second.computed_samples == 0
    ext = Store.open(tmp_path / "demo-out" / "store").sql("SELECT * FROM _extractions").to_pylist()
    assert [(r["workers"], r["devices"], r["samples_computed"]) for r in ext] == [(2, ["cpu", "cpu"], 13)]


def test_the_demo_command_is_mounted():
    from typer.testing import CliRunner

    from l2s_data.cli import app

    res = CliRunner().invoke(app, ["demo", "--help"])
    assert res.exit_code == 0 and "--out" in res.output


def test_a_cached_tiny_checkpoint_with_an_older_chat_template_is_not_reused(tmp_path):
    from l2s_data.demo import checkpoint_is_current
    from l2s_data.models.templates import TEMPLATES

    (tmp_path / "chat_template.jinja").write_text("{{ 'USER: ' }}...{{ eos_token }}")
    assert not checkpoint_is_current(tmp_path)
    (tmp_path / "chat_template.jinja").write_text(TEMPLATES["llava"] + "\n")
    assert checkpoint_is_current(tmp_path)


def test_the_demo_console_prints_a_long_command_with_brackets_whole():
    from l2s_data.demo import plain_console

    console, buf = plain_console(), io.StringIO()
    console.file = buf
    line = 'l2s sql --store runs/[red]store "SELECT ' + "a, " * 40 + 'b FROM manifests"'
    console.print(line)
    assert buf.getvalue() == line + "\n"


def test_the_demo_config_runs_the_methods_its_inputs_allow(tmp_path):
    bare = demo_eval_config(tmp_path)
    assert bare.steering.methods == ["none", "prompt-only", "mean-s", "norm-rnd", "p2s"]
    assert bare.cache.pair_recipe == "demo-pair" and bare.run.store == str(tmp_path / "store")
    full = demo_eval_config(tmp_path, predictor=tmp_path / "g.safetensors", ba_recipe="demo-ba-pair", guard=tmp_path / "g")
    assert full.steering.methods == ["none", "prompt-only", "mean-s", "mean-s-ba", "norm-rnd", "l2s", "p2s"]
    assert full.judges.guard == str(tmp_path / "g") and full.l2s.input_layer is None
    assert full.steering.layer == 2
