"""`l2s submit extract` through the Ray Jobs API of the session's head (token auth on), and
`l2s jobs list|status|logs`."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from l2s_data.cli import app
from l2s_data.store import Store

N = 13


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from l2s_data.datasets import make_synthetic

    out = tmp_path_factory.mktemp("synthetic-safety")
    make_synthetic("synthetic-safety", out, n=N)
    return out


@pytest.mark.slow
def test_a_submitted_extraction_fills_the_store_and_its_logs_show_the_run(ray_address, tiny_checkpoint, data_dir,
                                                                          tmp_path):
    dashboard = os.environ["L2S_TEST_RAY_DASHBOARD"]
    store = tmp_path / "store"
    cfg = tmp_path / "extract.toml"
    cfg.write_text(f'[model]\npath = "{tiny_checkpoint("llava")}"\n[data]\npath = "{data_dir}"\n'
                   f'[behavior]\nbehavior = "safety-llava"\n[recipe]\nlayers = [0, 1]\n'
                   f'[run]\nstore = "{store}"\nbatch_size = 4\nshard_size = 8\n')
    runner = CliRunner()
    res = runner.invoke(app, ["submit", "extract", str(cfg), "--address", dashboard, "--workers", "1",
                              "--env", "L2S_TEST_MARK=submitted", "--wait"])
    assert res.exit_code == 0, res.output
    assert "SUCCEEDED" in res.output
    job_id = res.output.split("submitted extract job ")[1].split()[0]

    # the job's result is in the store: every key of the config, one extractions row
    s = Store.open(store)
    runs = s.sql("SELECT * FROM _extractions").to_pylist()
    assert len(runs) == 1 and runs[0]["workers"] == 1 and runs[0]["samples_computed"] == N
    assert sum(s.snapshot().committed_keys(rid).num_rows for rid in runs[0]["recipe_ids"]) == runs[0]["keys_written"] > 0

    logs = runner.invoke(app, ["jobs", "logs", job_id, "--address", dashboard])
    assert logs.exit_code == 0, logs.output
    assert "worker pid" in logs.output and f"computed {N} samples" in logs.output
    status = runner.invoke(app, ["jobs", "status", job_id, "--address", dashboard])
    assert status.exit_code == 0 and f"{job_id}: SUCCEEDED" in status.output
    listed = runner.invoke(app, ["jobs", "list", "--address", dashboard])
    assert listed.exit_code == 0 and job_id in listed.output


@pytest.mark.slow
def test_the_jobs_api_refuses_a_wrong_token_and_the_error_says_so(ray_address, tmp_path, monkeypatch):
    bad = tmp_path / "token"
    bad.write_text("not-the-token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    res = CliRunner().invoke(app, ["jobs", "list", "--address", os.environ["L2S_TEST_RAY_DASHBOARD"],
                                   "--token-file", str(bad)])
    assert res.exit_code == 2
    assert "auth token" in res.output


@pytest.mark.slow
def test_jobs_status_of_an_unknown_job_names_it(ray_address):
    res = CliRunner().invoke(app, ["jobs", "status", "raysubmit_doesnotexist",
                                   "--address", os.environ["L2S_TEST_RAY_DASHBOARD"]])
    assert res.exit_code == 2


@pytest.mark.slow
def test_a_stopped_job_ends_stopped(ray_address, tiny_checkpoint, data_dir, tmp_path):
    from l2s_data.submit import JobClient

    dashboard = os.environ["L2S_TEST_RAY_DASHBOARD"]
    cfg = tmp_path / "extract.toml"
    cfg.write_text(f'[model]\npath = "{tiny_checkpoint("llava")}"\n[data]\npath = "{data_dir}"\n'
                   f'[behavior]\nbehavior = "safety-llava"\n[run]\nstore = "{tmp_path / "store"}"\n')
    runner = CliRunner()
    res = runner.invoke(app, ["submit", "extract", str(cfg), "--address", dashboard])
    assert res.exit_code == 0, res.output
    job_id = res.output.split("submitted extract job ")[1].split()[0]
    # stopped right away: a job takes seconds to start its driver, so it cannot have ended yet
    stop = runner.invoke(app, ["jobs", "stop", job_id, "--address", dashboard])
    assert stop.exit_code == 0 and f"{job_id}: stop requested" in stop.output
    assert JobClient(dashboard).wait(job_id, timeout_s=300).status == "STOPPED"
    status = runner.invoke(app, ["jobs", "status", job_id, "--address", dashboard])
    assert f"{job_id}: STOPPED" in status.output
