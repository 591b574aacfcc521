"""`l2s serve CONFIG` as a user runs it: a second application on the session's cluster, answered
at the address it prints, deleted on Ctrl-C (the first application keeps serving)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from .conftest import serve_config_dict

pytestmark = pytest.mark.slow


def _toml(d: dict) -> str:
    lines = []
    for section, values in d.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]  # JSON scalars and lists are TOML
    return "\n".join(lines) + "\n"


def test_l2s_serve_answers_where_it_says_and_stops_its_application_on_ctrl_c(served, ray_address, tmp_path):
    from ray import serve

    port = int(served.base_url.rsplit(":", 1)[1].split("/")[0])
    cfg = tmp_path / "serve.toml"
    cfg.write_text(_toml(serve_config_dict(served.world, name="l2s-cli", route_prefix="/cli", model_name="cli")))
    l2s = Path(sys.executable).parent / "l2s"
    proc = subprocess.Popen([str(l2s), "serve", str(cfg), "--address", ray_address, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    lines: list[str] = []
    ready, ended = threading.Event(), threading.Event()

    def watch() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops it" in line:
                ready.set()
        ready.set()
        ended.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        assert ready.wait(300) and proc.poll() is None, "".join(lines)
        url = next(ln.split(" at ", 1)[1].strip() for ln in lines if ln.startswith("serving "))
        assert url == f"http://127.0.0.1:{port}/cli/v1"
        ids = [m["id"] for m in httpx.get(f"{url}/models", timeout=60).json()["data"]]
        assert ids == ["cli:none", "cli:prompt-only", "cli:mean-s", "cli:l2s"]
        r = httpx.post(f"{url}/chat/completions", timeout=120,
                       json={"model": "cli:mean-s", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
        assert r.status_code == 200 and r.json()["l2s"]["method"] == "mean-s"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    ended.wait(30)
    assert lines[-1].strip() == "stopped"
    assert "l2s-cli" not in serve.status().applications
    # the session's application was left alone
    assert httpx.get(f"{served.base_url}/models", timeout=60).status_code == 200
