"""`l2s serve CONFIG` as a user runs it: a second application on the session's cluster, answered
at the address it prints, deleted on Ctrl-C (the first application keeps serving)."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from .conftest import serve_config_dict

pytestmark = pytest.mark.slow


def _signal_a_thread_other_than_main(pid: int, sig: int) -> str:
    """Send ``sig`` to one of ``pid``'s threads that is not its main thread and does not block
    ``sig`` (Linux, glibc's ``tgkill``); return that thread's name.

    The kernel may hand a signal sent to the process (Ctrl-C, ``kill PID``) to any such thread:
    Ray's gRPC and GCS client threads leave SIGINT unblocked. Sent this way, it always does.
    """
    tgkill = ctypes.CDLL(None, use_errno=True).tgkill
    for task in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda t: int(t.name)):
        blocked = int(re.search(r"^SigBlk:\s*([0-9a-f]+)", (task / "status").read_text(), re.M).group(1), 16)
        if int(task.name) != pid and not (blocked >> (sig - 1)) & 1:
            if tgkill(pid, int(task.name), sig) != 0:
                raise OSError(ctypes.get_errno(), f"tgkill {pid} {task.name}")
            return (task / "comm").read_text().strip()
    raise AssertionError(f"every thread of {pid} but its main one blocks signal {sig}")


def test_l2s_serve_answers_where_it_says_and_stops_its_application_on_ctrl_c(served, ray_address, config_toml,
                                                                             tmp_path):
    from ray import serve

    port = int(served.base_url.rsplit(":", 1)[1].split("/")[0])
    cfg = tmp_path / "serve.toml"
    cfg.write_text(config_toml(serve_config_dict(served.world, name="l2s-cli", route_prefix="/cli", model_name="cli")))
    l2s = Path(sys.executable).parent / "l2s"
    proc = subprocess.Popen([str(l2s), "serve", str(cfg), "--address", ray_address, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200", "PYTHONFAULTHANDLER": "1"})
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
        # Ctrl-C as the kernel may deliver it: to one of Ray's threads rather than the main one.
        # `l2s serve` slept on in its wait when it came that way, and never deleted its application.
        thread = _signal_a_thread_other_than_main(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's stack goes to the output
            proc.wait(30)
            ended.wait(30)
            pytest.fail(f"l2s serve did not stop within 120 s of a SIGINT caught by its thread {thread!r}; "
                        f"it printed:\n{''.join(lines)}")
        ended.wait(30)
        assert code == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    # Ray's log lines reach the same pipe from another stream, and one may still lack its newline
    # when `l2s serve` prints (seen: "... 200 128.4msSIGINT: deleting ..."): look for the text.
    out = "".join(lines)
    assert out.rstrip().endswith("stopped"), out
    assert "SIGINT: deleting application 'l2s-cli'" in out, out
    assert "l2s-cli" not in serve.status().applications
    # the session's application was left alone
    assert httpx.get(f"{served.base_url}/models", timeout=60).status_code == 200
