"""Faults with real processes: a writer killed mid-shard, racing commits, concurrent writers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from l2s_data.store import Store, ops

from .conftest import committed, rows, sample_ids

# A child writes shards into a store; it prints a line after each step and can wait for a file.
CHILD = textwrap.dedent(
    """
    import sys, time, os, numpy as np
    from l2s_data.store import Store
    url, shards, n, wait_for = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4]
    store = Store.open(url)
    for shard in shards:
        ids = [f"{shard}-{i:04d}" for i in range(n)]
        seed = sum(map(ord, shard))
        with store.shard_writer(shard, "r", ids, chunk_bytes=256) as w:
            for layer in range(3):
                a = np.random.default_rng(seed + layer).standard_normal((n, 16)).astype(np.float32)
                w.write("p2s", "completion_last", layer, a, "float32")
                print("wrote", shard, layer, flush=True)
            print("ready", shard, flush=True)
            # Wait for `wait_for`, or for `wait_for.<shard>`, which releases this shard alone.
            while wait_for != "-" and not (os.path.exists(wait_for) or os.path.exists(wait_for + "." + shard)):
                time.sleep(0.01)
        print("won" if w.won else "lost", shard, flush=True)
    """
)


def _spawn(url: str, shards: list[str], n: int = 20, wait_for: str = "-") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, url, ",".join(shards), str(n), wait_for],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_line(p: subprocess.Popen, prefix: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if line.startswith(prefix):
            return line.strip()
        if not line and p.poll() is not None:
            raise AssertionError(f"child exited {p.returncode}: {p.stderr.read()}")
    raise AssertionError(f"no {prefix!r} line from child within {timeout}s")


def _expected(shard: str, layer: int, n: int = 20) -> np.ndarray:
    seed = sum(map(ord, shard))
    return np.random.default_rng(seed + layer).standard_normal((n, 16)).astype(np.float32)


@pytest.mark.slow
def test_a_writer_killed_mid_shard_leaves_nothing_visible_and_a_rerun_completes(store):
    go = Path(store.url) / "never"
    p = _spawn(store.url, ["k"], wait_for=str(go))
    _wait_line(p, "wrote k 1")
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    snap = store.snapshot()
    assert snap.row_count == 0 and not committed(store, "k")
    assert len(store.admin.info().orphans) == 1
    # The rerun writes the whole shard again, in this process, and commits it.
    ids = [f"k-{i:04d}" for i in range(20)]
    with store.shard_writer("k", "r", ids) as w:
        for layer in range(3):
            w.write("p2s", "completion_last", layer, _expected("k", layer), "float32")
    assert w.won
    np.testing.assert_array_equal(store.snapshot().read("r", "p2s", "completion_last", 2, ids), _expected("k", 2))
    removed = store.admin.gc(grace_s=0).removed
    assert len(removed) == 1 and removed[0].startswith("shards/k/")
    assert store.admin.verify() == []


@pytest.mark.slow
def test_two_attempts_racing_to_commit_one_shard_exactly_one_wins(store):
    go = Path(store.url) / "go"
    a, b = _spawn(store.url, ["x"], wait_for=str(go)), _spawn(store.url, ["x"], wait_for=str(go))
    _wait_line(a, "ready x")
    _wait_line(b, "ready x")
    go.write_text("go")
    outs = []
    for p in (a, b):
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(out.strip().splitlines()[-1])
    assert sorted(outs) == ["lost x", "won x"], outs
    snap = store.snapshot()
    assert len(snap.attempts) == 1 and snap.row_count == 60
    info = store.admin.info()
    assert len(info.orphans) == 1  # the loser
    gone = store.admin.gc(grace_s=3600).removed  # a loser goes at once, whatever the grace
    assert gone == info.orphans
    assert store.admin.verify() == []


@pytest.mark.slow
def test_two_processes_writing_different_shards_lose_nothing(store):
    a = _spawn(store.url, [f"a{i}" for i in range(4)])
    b = _spawn(store.url, [f"b{i}" for i in range(4)])
    for p in (a, b):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.count("won") == 4
    snap = store.snapshot()
    assert len(snap.shards) == 8 and snap.row_count == 8 * 3 * 20
    for shard in [f"a{i}" for i in range(4)] + [f"b{i}" for i in range(4)]:
        ids = [f"{shard}-{i:04d}" for i in range(20)]
        for layer in range(3):
            np.testing.assert_array_equal(snap.read("r", "p2s", "completion_last", layer, ids), _expected(shard, layer))


@pytest.mark.slow
def test_a_reader_opened_during_writes_sees_only_earlier_commits(store):
    go = Path(store.url) / "go"
    p = _spawn(store.url, ["w0", "w1"], wait_for=str(go))
    _wait_line(p, "ready w0")
    before = store.snapshot()  # w0 is fully written but not committed yet
    assert before.row_count == 0
    Path(f"{go}.w0").write_text("go")  # release w0 only: w1 waits until `during` is taken
    _wait_line(p, "won w0")
    during = store.snapshot()
    _wait_line(p, "ready w1")
    Path(f"{go}.w1").write_text("go")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert set(during.shards) == {"w0"}
    assert before.row_count == 0 and set(during.shards) == {"w0"}  # unchanged by later commits
    assert set(store.snapshot().shards) == {"w0", "w1"}
    ids = [f"w0-{i:04d}" for i in range(20)]
    np.testing.assert_array_equal(during.read("r", "p2s", "completion_last", 0, ids), _expected("w0", 0))


def test_in_process_writers_on_separate_threads_commit_once(store):
    import threading

    ids = sample_ids(6)
    won = []

    def attempt(seed):
        with store.shard_writer("t", "r", ids) as w:
            w.write("p2s", "completion_last", 0, rows(6, 4, seed), "float32")
        won.append(w.won)

    threads = [threading.Thread(target=attempt, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False, False, False, True]
    assert os.path.exists(os.path.join(store.url, "manifests", "t.parquet"))
