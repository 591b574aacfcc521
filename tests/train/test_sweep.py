"""Sweeps on a real Ray head: every trial lands in `runs`; reports plot the metric per knob."""

from __future__ import annotations

import json

import pytest

from l2s_data.errors import ConfigError
from l2s_data.store import Store
from l2s_data.train.sweep import draw_trials, parse_sweep_config, run_sweep


def _sweep(planted, planted_mod, tmp_path, params, **sweep):
    base = planted_mod.train_config(planted.url, tmp_path / "runs", trainer={"epochs": 6, "hidden_size": 16})
    return parse_sweep_config({"name": "planted-sweep", "base": base,
                               "sweep": {"max_concurrent": 2, "params": params, **sweep}})


@pytest.mark.slow
def test_a_sweep_of_four_runs_leaves_four_rows_with_distinct_configs_and_one_snapshot(
        planted, planted_mod, tmp_path, ray_address):
    cfg = _sweep(planted, planted_mod, tmp_path, {"input.layer": [0, 1], "trainer.lr": [1e-3, 3e-3]})
    res = run_sweep(cfg, ray_address=ray_address)
    assert res.selections_read == 2  # one per input layer, shared by the two lr trials each
    store = Store.open(planted.url)
    t = store.sql(f"SELECT run_id, kind, status, snapshot_id, config_json, val_cosine FROM runs "
                  f"WHERE sweep_id = '{res.sweep_id}' ORDER BY val_cosine DESC")
    assert t.num_rows == 4 and sorted(t["run_id"].to_pylist()) == sorted(res.run_ids)
    assert set(t["kind"].to_pylist()) == {"sweep"} and set(t["status"].to_pylist()) == {"completed"}
    assert set(t["snapshot_id"].to_pylist()) == {store.snapshot().id} == {res.snapshot_id}
    configs = [json.loads(c) for c in t["config_json"].to_pylist()]
    assert len({json.dumps(c, sort_keys=True) for c in configs}) == 4
    assert {(c["input"]["layer"], c["trainer"]["lr"]) for c in configs} == {(0, 1e-3), (0, 3e-3), (1, 1e-3), (1, 3e-3)}
    assert res.best_run_id == t["run_id"][0].as_py()
    # Tune hears from a trial once (no scheduler), but every epoch's metrics land in runs
    runs = store.sql(f"SELECT metrics_json FROM runs WHERE sweep_id = '{res.sweep_id}'")["metrics_json"].to_pylist()
    assert [len(json.loads(m)["history"]) for m in runs] == [6] * 4
    # and Tune ranked the trials by the figures runs holds (its last result per trial)
    tune_last = {}
    for f in (tmp_path / "runs" / "tune" / res.sweep_id).glob("*/result.json"):
        last = json.loads(f.read_text().strip().splitlines()[-1])
        tune_last[last["run_id"]] = last["val_cosine"]
    assert tune_last == dict(zip(t["run_id"].to_pylist(), t["val_cosine"].to_pylist()))
    # the planted map lives at input layer 1: those trials rank first
    assert {c["input"]["layer"] for c in configs[:2]} == {1}

    from l2s_data.train.report import report_sweep

    path = report_sweep(store, res.sweep_id, tmp_path / "report")
    text = path.read_text()
    for knob in ("input_layer", "trainer_lr"):
        png = tmp_path / "report" / f"val_cosine_vs_{knob}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and png.name in text
    assert all(r in text for r in res.run_ids)


def test_random_mode_draws_the_same_trials_for_the_same_seed(planted, planted_mod, tmp_path):
    params = {"trainer.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "seed": [0, 1, 2]}
    a = _sweep(planted, planted_mod, tmp_path, params, mode="random", num_samples=5, seed=7)
    b = _sweep(planted, planted_mod, tmp_path, params, mode="random", num_samples=5, seed=7)
    c = _sweep(planted, planted_mod, tmp_path, params, mode="random", num_samples=5, seed=8)
    assert draw_trials(a) == draw_trials(b) != draw_trials(c)
    assert len(draw_trials(a)) == 5
    assert all(1e-4 <= t["trainer.lr"] <= 1e-2 and t["seed"] in (0, 1, 2) for t in draw_trials(a))


def test_a_sweep_param_that_names_no_config_key_is_refused_up_front(planted, planted_mod, tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'trainer.learning_rate'"):
        _sweep(planted, planted_mod, tmp_path, {"trainer.learning_rate": [1e-3]})
    with pytest.raises(ConfigError, match="unknown key 'sweep.mood'"):
        parse_sweep_config({"base": planted_mod.train_config(planted.url, tmp_path), "sweep": {"mood": "grid"}})
    with pytest.raises(ConfigError, match="a grid needs lists"):
        _sweep(planted, planted_mod, tmp_path, {"trainer.lr": {"low": 0.1, "high": 0.2}})


@pytest.mark.slow
def test_an_asha_sweep_commits_every_trial_completed_or_stopped_with_its_epochs(
        planted, planted_mod, tmp_path, ray_address):
    cfg = _sweep(planted, planted_mod, tmp_path, {"trainer.lr": [1e-5, 3e-5, 1e-3, 3e-3]},
                 scheduler="asha", grace_epochs=1)
    res = run_sweep(cfg, ray_address=ray_address)
    t = Store.open(planted.url).sql(f"SELECT run_id, status, metrics_json, artifact FROM runs "
                                    f"WHERE sweep_id = '{res.sweep_id}'")
    assert sorted(t["run_id"].to_pylist()) == sorted(res.run_ids)
    for rid, status, metrics, artifact in zip(*(t[c].to_pylist() for c in ("run_id", "status", "metrics_json", "artifact"))):
        hist = json.loads(metrics)["history"]
        if status == "stopped":
            assert rid in res.stopped and artifact is None and 1 <= len(hist) < 6
        else:
            assert status == "completed" and len(hist) == 6 and artifact


@pytest.mark.slow
def test_l2s_sweep_runs_a_sweep_file_and_prints_the_best_run(planted, planted_mod, tmp_path, ray_address):
    from typer.testing import CliRunner

    from l2s_data.cli import app

    base = planted_mod.train_config(planted.url, tmp_path / "runs", trainer={"epochs": 3, "hidden_size": 8})
    lines = [f'store = "{base["store"]}"', f'out_dir = "{base["out_dir"]}"', 'name = "cli"']
    for table in ("input", "target", "split", "trainer"):
        lines.append(f"[{table}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in base[table].items()]
    (tmp_path / "base.toml").write_text("\n".join(lines) + "\n")
    (tmp_path / "sweep.toml").write_text('name = "cli-sweep"\nbase = "base.toml"\n[sweep]\nmax_concurrent = 2\n'
                                         '[sweep.params]\n"seed" = [0, 1]\n')
    res = CliRunner().invoke(app, ["sweep", str(tmp_path / "sweep.toml"), "--ray-address", ray_address])
    assert res.exit_code == 0, res.output
    sweep_id = res.output.split("sweep cli-sweep-")[1].split(":")[0]
    rows = Store.open(planted.url).sql(f"SELECT run_id, config_json FROM runs WHERE sweep_id = 'cli-sweep-{sweep_id}'")
    assert rows.num_rows == 2
    assert sorted(json.loads(c)["seed"] for c in rows["config_json"].to_pylist()) == [0, 1]
    assert "best: cli-sweep-" in res.output


def test_the_shipped_sweep_config_draws_eight_trials_over_the_demo_store():
    from pathlib import Path

    from l2s_data.train.sweep import load_sweep_config

    cfg = load_sweep_config(Path(__file__).resolve().parents[2] / "l2s_data" / "train" / "configs" / "tiny-llava-sweep.toml")
    trials = draw_trials(cfg)
    assert len(trials) == 8 and len({json.dumps(t, sort_keys=True) for t in trials}) == 8
    assert cfg.base["store"] == "demo-out/store" and cfg.base["input"]["recipe"] == "demo-input"


@pytest.mark.slow
def test_l2s_submit_sweep_runs_the_sweep_as_a_ray_job(planted, planted_mod, tmp_path, ray_address):
    import os

    from typer.testing import CliRunner

    from l2s_data.cli import app

    base = planted_mod.train_config(planted.url, tmp_path / "runs", trainer={"epochs": 2, "hidden_size": 8})
    cfg = tmp_path / "sweep.toml"
    lines = ['name = "job-sweep"', "[base]", f'store = "{base["store"]}"', f'out_dir = "{base["out_dir"]}"']
    for table in ("input", "target", "split", "trainer"):
        lines.append(f"[base.{table}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in base[table].items()]
    lines += ["[sweep]", "max_concurrent = 2", "[sweep.params]", '"seed" = [0, 1]']
    cfg.write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(app, ["submit", "sweep", str(cfg), "--address", os.environ["L2S_TEST_RAY_DASHBOARD"],
                                   "--wait"])
    assert res.exit_code == 0, res.output
    assert "SUCCEEDED" in res.output
    import re

    sweep_id = re.search(r'"sweep_id": "([^"]+)"', res.output).group(1)  # jobs/train.py's result line
    rows = Store.open(planted.url).sql(f"SELECT run_id, status FROM runs WHERE sweep_id = '{sweep_id}'")
    assert rows.num_rows == 2 and set(rows["status"].to_pylist()) == {"completed"}
