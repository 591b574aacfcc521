"""A replica killed by PID during a request: Ray Serve starts another, and the service answers
the next requests."""

from __future__ import annotations

import os
import signal
import threading

import httpx
import pytest

pytestmark = pytest.mark.slow


def _replica(served) -> dict:
    r = httpx.get(f"{served.base_url}/l2s/replica", timeout=120)
    r.raise_for_status()
    return r.json()


def test_a_replica_killed_during_a_request_is_replaced_and_the_next_requests_are_answered(served, client):
    import psutil

    before = _replica(served)
    pid = before["pid"]
    assert psutil.Process(pid).is_running()
    outcome: dict = {}
    started = threading.Event()

    def long_request() -> None:
        started.set()
        try:
            outcome["response"] = httpx.post(
                f"{served.base_url}/chat/completions", timeout=300,
                json={"model": "tiny-llava:l2s", "messages": [{"role": "user", "content": "Tell me a long story."}],
                      "max_tokens": 64, "temperature": 1.0, "seed": 0})
        except httpx.HTTPError as err:  # the connection may be cut with the replica
            outcome["error"] = err

    t = threading.Thread(target=long_request)
    t.start()
    started.wait(60)
    # The replica answers its status route while a batch generates in its worker thread: wait
    # (bounded) until the long request is being generated, then kill the replica's process.
    for _ in range(6000):
        info = _replica(served)
        if info["busy_rows"] > 0 or "response" in outcome:
            break
    assert "response" not in outcome, "the request ended before the replica could be killed; make it longer"
    assert info["pid"] == pid
    os.kill(pid, signal.SIGKILL)
    t.join(300)
    assert not t.is_alive()
    failed = outcome.get("error") is not None or outcome["response"].status_code >= 500
    assert failed  # the request in flight died with its replica
    # The next requests wait for the replacement (a new process, the model loaded again).
    answers = [client.chat.completions.create(model="tiny-llava:none", max_tokens=4,
                                              messages=[{"role": "user", "content": f"Question {i}?"}])
               for i in range(3)]
    assert all(a.choices[0].message.content is not None for a in answers)
    after = _replica(served)
    assert after["pid"] != pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
