"""Training on a store that the tiny LLaVA really extracted: no model, CLI, reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from l2s_data.cli import app
from l2s_data.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _config(store: Path, out: Path, **trainer) -> str:
    t = {"hidden_size": 16, "epochs": 15, "batch_size": 8, "lr": 3e-3, "cos_weight": 0.1, **trainer}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in t.items())
    return textwrap.dedent(f"""\
        store = "{store}"
        out_dir = "{out}"
        name = "tiny"
        [input]
        recipe = "tiny-input"
        position = "prompt_last"
        layer = 2
        [target]
        recipe = "tiny-pair"
        position = "completion_last"
        layer = 3
        [split]
        train_where = "split = 'train'"
        val_where = ""
        [trainer]
        """) + lines + "\n"


@pytest.mark.slow
def test_the_training_job_works_with_transformers_blocked(tiny_store, tmp_path):
    cfg = tmp_path / "train.toml"
    cfg.write_text(_config(tiny_store, tmp_path / "runs"))
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "transformers" or name.startswith("transformers."):
                    raise ImportError("transformers is blocked in this test: " + name)
        sys.meta_path.insert(0, Block())
        import runpy
        sys.argv = ["jobs/train.py", {str(cfg)!r}]
        try:
            runpy.run_path("jobs/train.py", run_name="__main__")
        except SystemExit as e:
            assert e.code == 0, e.code
        assert "transformers" not in sys.modules
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])  # jobs/train.py prints one JSON line last
    run_id = result["run_id"]
    row = Store.open(tiny_store).sql(f"SELECT status, val_cosine FROM runs WHERE run_id = '{run_id}'")
    assert row["status"].to_pylist() == ["completed"]
    assert -1.0 <= row["val_cosine"][0].as_py() <= 1.0


def test_l2s_train_then_report_train_write_a_report_with_plots(tiny_store, tmp_path):
    cfg = tmp_path / "train.toml"
    cfg.write_text(_config(tiny_store, tmp_path / "runs"))
    res = CliRunner().invoke(app, ["train", str(cfg)])
    assert res.exit_code == 0, res.output
    run_id = res.output.split("run ")[1].split(":")[0]
    store = Store.open(tiny_store)
    row = store.sql(f"SELECT recipe_ids, snapshot_id, artifact FROM runs WHERE run_id = '{run_id}'").to_pylist()[0]
    recipes = store.sql("SELECT recipe_id FROM recipes WHERE name IN ('tiny-input', 'tiny-pair')")
    assert sorted(row["recipe_ids"]) == sorted(recipes["recipe_id"].to_pylist())
    assert row["snapshot_id"] == store.snapshot().id and Path(row["artifact"]).is_file()

    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["report", "train", run_id, "--out", str(out), "--store", str(tiny_store)])
    assert res.exit_code == 0, res.output
    text = (out / "report.md").read_text()
    for png in ("learning_curves.png", "category_cosine.png", "projection.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({png})" in text
    assert "val_cosine" in text and "Mean-S" in text
    # every category of the validation rows (a hash share of the training split) has a row
    from l2s_data.datasets.splits import hash_share

    train = store.sql("SELECT sample_id, category FROM memberships WHERE split = 'train'").to_pylist()
    cats = {r["category"] for r in train if hash_share(r["sample_id"], 0.2)}
    assert cats and all(f"| {c} |" in text for c in cats)
    assert "validation rows: training rows" in text


def test_a_run_id_that_does_not_exist_is_named(tiny_store, tmp_path):
    res = CliRunner().invoke(app, ["report", "train", "no-such-run", "--out", str(tmp_path), "--store", str(tiny_store)])
    assert res.exit_code == 1
    assert "run 'no-such-run' is not in the runs table" in res.output
    res = CliRunner().invoke(app, ["report", "sweep", "no-such-sweep", "--store", str(tiny_store)])
    assert res.exit_code == 1 and "sweep 'no-such-sweep' has no runs" in res.output


def test_an_unknown_key_in_a_config_file_fails_the_command_naming_it(tiny_store, tmp_path):
    cfg = tmp_path / "train.toml"
    cfg.write_text(_config(tiny_store, tmp_path / "runs", hidden=3))
    res = CliRunner().invoke(app, ["train", str(cfg)])
    assert res.exit_code == 1 and "unknown key 'trainer.hidden'" in res.output


def test_the_shipped_tiny_config_names_the_demo_stores_recipes_and_trains_on_it(tiny_store, tmp_path):
    from l2s_data.train import load_train_config, train

    cfg = load_train_config(ROOT / "l2s_data" / "train" / "configs" / "tiny-llava.toml")
    assert (cfg.store, cfg.input.recipe, cfg.target.recipe) == ("demo-out/store", "demo-input", "demo-pair")
    # the demo names its recipes "demo-*"; this store names them "tiny-*"
    cfg = cfg.model_copy(update={"store": str(tiny_store), "out_dir": str(tmp_path),
                                 "input": cfg.input.model_copy(update={"recipe": "tiny-input"}),
                                 "target": cfg.target.model_copy(update={"recipe": "tiny-pair"}),
                                 "trainer": cfg.trainer.model_copy(update={"epochs": 3})})
    r = train(cfg, save=False)
    assert np.isfinite(r.metrics["val_cosine"]) and r.metrics["val_rows"] > 0


def test_report_train_with_no_plots_writes_the_tables_without_pngs(planted, planted_mod, tmp_path):
    from l2s_data.train import parse_train_config, train

    res = train(parse_train_config(planted_mod.train_config(planted.url, tmp_path / "runs", trainer={"epochs": 2})))
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", "train", res.run_id, "--out", str(out), "--store", str(planted.url),
                                 "--no-plots"])
    assert r.exit_code == 0, r.output
    text = (out / "report.md").read_text()
    assert not list(out.glob("*.png")) and "(written without plots)" in text and "| val_cosine |" in text
