"""A replica killed by PID during a request: Ray Serve starts another, and the service answers
the next requests."""

from __future__ import annotations

import os
import signal
import threading

import httpx
import pytest

pytestmark = pytest.mark.slow

#: Clients that keep the replica busy: each sends its next request as soon as one is answered.
CLIENTS = 3


def _replica(served) -> dict:
    r = httpx.get(f"{served.base_url}/l2s/replica", timeout=120)
    r.raise_for_status()
    return r.json()


def test_a_replica_killed_during_a_request_is_replaced_and_the_next_requests_are_answered(served, client):
    import psutil

    before = _replica(served)
    pid = before["pid"]
    assert psutil.Process(pid).is_running()
    # (answered after the kill?, status code or the error)
    outcomes: list[tuple[bool, int | Exception]] = []
    killed, stop = threading.Event(), threading.Event()

    def keep_asking() -> None:
        # One long request after another, so that the replica is never idle until the kill: a
        # single request could be answered between two looks at the replica (a tiny model
        # generates 64 tokens in a fraction of a second), and then nothing was in flight.
        while not stop.is_set():
            try:
                r = httpx.post(
                    f"{served.base_url}/chat/completions", timeout=300,
                    json={"model": "tiny-llava:l2s", "messages": [{"role": "user", "content": "Tell me a long story."}],
                          "max_tokens": 64, "temperature": 1.0, "seed": 0})
                outcomes.append((killed.is_set(), r.status_code))
            except httpx.HTTPError as err:  # the connection may be cut with the replica
                outcomes.append((killed.is_set(), err))

    threads = [threading.Thread(target=keep_asking, daemon=True) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        # The replica answers its status route while a batch generates in its worker thread:
        # wait (bounded) until it is generating, then kill its process.
        for _ in range(6000):
            info = _replica(served)
            if info["busy_rows"] > 0:
                break
        else:
            pytest.fail("the replica never reported a request being generated")
        assert info["pid"] == pid
        killed.set()  # before the signal, so that no failure it causes is counted as earlier
        os.kill(pid, signal.SIGKILL)
    finally:
        stop.set()
        for t in threads:
            t.join(300)
    assert not any(t.is_alive() for t in threads)
    failed = [(after, o) for after, o in outcomes if not isinstance(o, int) or o >= 500]
    assert failed, f"no request failed with the replica: {outcomes}"  # what was in flight died with it
    assert all(after for after, _ in failed), f"a request failed before the kill: {failed}"
    # The next requests wait for the replacement (a new process, the model loaded again).
    answers = [client.chat.completions.create(model="tiny-llava:none", max_tokens=4,
                                              messages=[{"role": "user", "content": f"Question {i}?"}])
               for i in range(3)]
    assert all(a.choices[0].message.content is not None for a in answers)
    after = _replica(served)
    assert after["pid"] != pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
