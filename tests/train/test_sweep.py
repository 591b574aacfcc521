"""Sweeps on a real Ray head: every trial lands in `runs`; reports plot the metric per knob."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from l2s_data.cli import app
from l2s_data.errors import ConfigError
from l2s_data.store import Store
from l2s_data.train.sweep import draw_trials, parse_sweep_config

def _sweep(planted, planted_mod, tmp_path, params, **sweep):
    base = planted_mod.train_config(planted.url, tmp_path / "runs", trainer={"epochs": 6, "hidden_size": 16})
    return parse_sweep_config({"name": "planted-sweep", "base": base,
                               "sweep": {"max_concurrent": 2, "params": params, **sweep}})


def _toml(base: dict, table: str = "") -> list[str]:
    """``base`` as TOML lines: its scalars, then one [table.sub] per dict."""
    head = [f"[{table}]"] if table else []
    scalars = [f"{k} = {json.dumps(v)}" for k, v in base.items() if not isinstance(v, dict)]
    subs = [line for k, v in base.items() if isinstance(v, dict) for line in _toml(v, f"{table}.{k}" if table else k)]
    return head + scalars + subs


@dataclass(frozen=True)
class GridSweep:
    dir: Path             # the sweep's folder: sweep.toml, runs/ (predictors, tune/)
    argv: list[str]       # the entrypoint that `l2s submit sweep` builds
    res: SimpleNamespace  # the job's result line: every field of SweepResult


@pytest.fixture(scope="module")
def grid(planted, planted_mod, tmp_path_factory, ray_address, run_submitted) -> GridSweep:
    """The module's one grid sweep (input.layer x lr: four trials), run as a cluster runs the job
    that `l2s submit sweep` builds (`python jobs/train.py SWEEP.toml --sweep`): here in this
    process, on the session's Ray head (RAY_ADDRESS). The Jobs API itself is tested end to end
    in tests/extract/test_ray_submit.py. One trial at a time: the test is not about parallelism, and
    each concurrent trial is a process of its own that imports torch and this package."""
    tmp = tmp_path_factory.mktemp("grid-sweep")
    base = planted_mod.train_config(planted.url, tmp / "runs", trainer={"epochs": 6, "hidden_size": 16})
    cfg = tmp / "sweep.toml"
    cfg.write_text("\n".join(['name = "planted-sweep"', *_toml(base, "base"), "[sweep]", "max_concurrent = 1",
                              "[sweep.params]", '"input.layer" = [0, 1]', '"trainer.lr" = [1e-3, 3e-3]']) + "\n")
    job = run_submitted("sweep", cfg)
    assert job.code == 0, job.output
    return GridSweep(tmp, job.argv, SimpleNamespace(**json.loads(job.output.strip().splitlines()[-1])))


@pytest.mark.slow
def test_a_sweep_of_four_runs_leaves_four_rows_with_distinct_configs_and_one_snapshot(planted, grid, tmp_path):
    res = grid.res  # {"input.layer": [0, 1], "trainer.lr": [1e-3, 3e-3]}, six epochs each
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
    for f in (grid.dir / "runs" / "tune" / res.sweep_id).glob("*/result.json"):
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
def test_l2s_sweep_runs_an_asha_sweep_file_and_commits_every_trial_completed_or_stopped_with_its_epochs(
        planted, planted_mod, tmp_path, ray_address):
    """`l2s sweep FILE` (a sweep whose base is another TOML file) with the ASHA scheduler: every
    trial lands in runs, a stopped one with the epochs it ran and no predictor; the best is printed.
    One trial at a time, strongest learning rate first: the weaker trials that follow fall below
    the first one's result at their first rung, so ASHA stops some of them on every run (two at a
    time, whether any was stopped depended on which trial reported first)."""
    base = planted_mod.train_config(planted.url, tmp_path / "runs", trainer={"epochs": 6, "hidden_size": 16})
    (tmp_path / "base.toml").write_text("\n".join(_toml(base)) + "\n")
    (tmp_path / "sweep.toml").write_text(
        'name = "cli-sweep"\nbase = "base.toml"\n[sweep]\nmax_concurrent = 1\nscheduler = "asha"\ngrace_epochs = 1\n'
        '[sweep.params]\n"trainer.lr" = [3e-3, 1e-3, 3e-5, 1e-5]\n')
    res = CliRunner().invoke(app, ["sweep", str(tmp_path / "sweep.toml"), "--ray-address", ray_address])
    assert res.exit_code == 0, res.output
    sweep_id = "cli-sweep-" + res.output.split("sweep cli-sweep-")[1].split(":")[0]
    assert f"best: {sweep_id}" in res.output
    t = Store.open(planted.url).sql("SELECT run_id, status, config_json, metrics_json, artifact FROM runs "
                                    "WHERE sweep_id = ?", params=[sweep_id])
    assert sorted(json.loads(c)["trainer"]["lr"] for c in t["config_json"].to_pylist()) == [1e-5, 3e-5, 1e-3, 3e-3]
    stopped = 0
    for status, metrics, artifact in zip(*(t[c].to_pylist() for c in ("status", "metrics_json", "artifact"))):
        hist = json.loads(metrics)["history"]
        if status == "stopped":
            stopped += 1
            assert artifact is None and 1 <= len(hist) < 6
        else:
            assert status == "completed" and len(hist) == 6 and artifact
    assert stopped > 0 and f"{stopped} stopped early" in res.output


def test_the_shipped_sweep_config_draws_eight_trials_over_the_demo_store():
    from pathlib import Path

    from l2s_data.train.sweep import load_sweep_config

    cfg = load_sweep_config(Path(__file__).resolve().parents[2] / "l2s_data" / "train" / "configs" / "tiny-llava-sweep.toml")
    trials = draw_trials(cfg)
    assert len(trials) == 8 and len({json.dumps(t, sort_keys=True) for t in trials}) == 8
    assert cfg.base["store"] == "demo-out/store" and cfg.base["input"]["recipe"] == "demo-input"


@pytest.mark.slow
def test_l2s_submit_sweep_builds_the_job_that_runs_the_sweep(planted, grid):
    assert grid.argv == ["python", "jobs/train.py", str(grid.dir / "sweep.toml"), "--sweep"]
    sweep_id = grid.res.sweep_id  # jobs/train.py's result line
    rows = Store.open(planted.url).sql(f"SELECT run_id, status FROM runs WHERE sweep_id = '{sweep_id}'")
    assert rows.num_rows == 4 and set(rows["status"].to_pylist()) == {"completed"}
