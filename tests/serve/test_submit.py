"""`l2s submit serve`: the job it builds deploys the application and ends, and the application
keeps answering. The session's application (the ``served`` fixture) is deployed by that job, run
here as a cluster runs it (its entrypoint, in a driver on the session's Ray head); the Jobs API
itself is tested end to end in tests/extract/test_ray_submit.py."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.slow


def test_the_job_that_submit_serve_builds_leaves_its_application_answering(served):
    job = served.job
    port = served.base_url.rsplit(":", 1)[1].split("/")[0]
    assert job.argv[:2] == ["python", "jobs/serve.py"] and job.argv[2].endswith("serve.toml")
    assert job.argv[3:] == ["--address", "auto", "--host", "127.0.0.1", "--port", port]
    assert job.code == 0  # deployed and ended, as a submitted job does
    assert f"at {served.base_url} (application '{served.app_name}')" in job.output
    assert f"http://127.0.0.1:{port}/v1" == served.base_url
    r = httpx.post(f"{served.base_url}/chat/completions", timeout=120,
                   json={"model": "tiny-llava:none", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
    assert r.status_code == 200 and r.json()["model"] == "tiny-llava:none"

