"""`l2s submit serve` through the Ray Jobs API of the session's head: the job deploys the
application and ends, and the application keeps answering."""

from __future__ import annotations

import os

import httpx
import pytest
from typer.testing import CliRunner

from l2s_data.cli import app

from .conftest import serve_config_dict
from .test_cli import _toml

pytestmark = pytest.mark.slow


def test_a_submitted_serve_job_leaves_its_application_answering(served, tmp_path):
    from ray import serve

    dashboard = os.environ["L2S_TEST_RAY_DASHBOARD"]
    port = int(served.base_url.rsplit(":", 1)[1].split("/")[0])
    cfg = tmp_path / "serve.toml"
    cfg.write_text(_toml(serve_config_dict(served.world, name="l2s-job", route_prefix="/job", model_name="job")))
    res = CliRunner().invoke(app, ["submit", "serve", str(cfg), "--address", dashboard, "--port", str(port),
                                   "--wait"])
    try:
        assert res.exit_code == 0, res.output
        assert "SUCCEEDED" in res.output and f"at http://127.0.0.1:{port}/job/v1" in res.output
        r = httpx.post(f"http://127.0.0.1:{port}/job/v1/chat/completions", timeout=120,
                       json={"model": "job:none", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
        assert r.status_code == 200 and r.json()["model"] == "job:none"
    finally:
        if "l2s-job" in serve.status().applications:
            serve.delete("l2s-job")
