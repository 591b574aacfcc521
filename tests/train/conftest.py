"""Fixtures of the training tests: a planted-map store, a store extracted from the tiny LLaVA,
and one local Ray head for the session (``ray_address``)."""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest


def _load_planted():
    name = "l2s_tests_planted"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "steer" / "planted.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.fixture(scope="session")
def planted_mod():
    return _load_planted()


@pytest.fixture(scope="session")
def planted(tmp_path_factory, planted_mod):
    return planted_mod.build(tmp_path_factory.mktemp("planted") / "store")


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_checkpoint, tiny_adapter):
    """A real extraction of the tiny LLaVA on 26 synthetic-safety samples (every layer, float32);
    recipes are named "tiny-input" and "tiny-pair", as `l2s demo` names its "demo-*"."""
    from l2s_data.datasets import make_synthetic
    from l2s_data.extract import Extraction, parse_config

    root = tmp_path_factory.mktemp("tiny-store")
    make_synthetic("synthetic-safety", root / "data", n=26)
    cfg = parse_config({
        "model": {"path": str(tiny_checkpoint("llava"))},
        "data": {"path": str(root / "data")},
        "behavior": {"behavior": "safety-llava"},
        "recipe": {"views": ["input", "pos", "neg", "p2s"], "layers": "all", "store_dtype": "float32",
                   "input_positions": ["prompt_last"], "pair_positions": ["completion_last"]},
        "run": {"store": str(root / "store"), "batch_size": 8, "shard_size": 16, "name": "tiny"},
    }, source="(test)")
    report = Extraction(cfg, adapter=tiny_adapter("llava")).run()
    assert report.computed_samples == 26
    return root / "store"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_mentioning(marker: str) -> list[int]:
    """PIDs whose command line mentions ``marker`` (this session's own Ray temp folder)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def _stop(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def ray_address():
    """One `ray start --head` on loopback for the session, with token authentication on.

    The token is in ``RAY_AUTH_TOKEN`` (with ``RAY_AUTH_MODE=token``) for this process and the
    processes it starts. Stopped at the end by the PIDs it started (the head's process group,
    then any process that names this session's Ray temp folder).
    """
    temp = tempfile.mkdtemp(prefix="l2s-ray-")  # short: Ray's unix sockets live under it
    port = _free_port()
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={port}", f"--temp-dir={temp}", "--num-cpus=2", "--num-gpus=0",
           "--object-store-memory=100000000", "--include-dashboard=false", "--disable-usage-stats"]
    head = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    ready, lines = threading.Event(), []

    def watch() -> None:
        for line in head.stdout:
            lines.append(line)
            if "block forever" in line:
                ready.set()
        ready.set()  # the command ended: not ready, but stop waiting

    threading.Thread(target=watch, daemon=True).start()
    try:
        if not ready.wait(300) or head.poll() is not None:
            raise RuntimeError("ray start --head did not come up:\n" + "".join(lines[-40:]))
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        _stop([head.pid] + _pids_mentioning(temp))
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
