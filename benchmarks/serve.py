"""Served throughput and latency: concurrent clients against one CPU replica, against the same
requests sent one after another, measured in the same run.

    python benchmarks/serve.py                    # tiny LLaVA, 16 clients, 96 requests, ~2 min on 2 cores
    python benchmarks/serve.py --clients 16 --requests 160 --batch 16 --tokens 16

What it builds (in a temporary folder): the tiny LLaVA, a synthetic-safety data set, an empty
store and a random L2S predictor (L' = 3, L* = 1), served by ``l2s_data.serve`` on a local Ray
(one replica, one CPU, one torch thread) on a free loopback port. Every request is an image
request (a data URL) with its own method (none / prompt-only / L2S, in turn), greedy, at most
``--tokens`` new tokens. Then:

- ``alone``      the requests sent one after another by one client (each batch holds one row);
- ``N clients``  the same requests sent by N clients at once, each sending its next request
                 when its last one is answered (Ray Serve batches them, up to ``--batch`` rows).

The clients are threads of this process on the same cores as the server: standard-library HTTP
with one keep-alive connection each and bodies serialised before the clock starts, so they take
little of the CPU the server needs.

Printed: requests/s of each and their ratio, latency p50/p90/p99, and the p50 under load
against the p50 alone; where a request's time went (medians of the ``timing`` each response
carries: parsing, waiting for its batch, the batch's run, and the rest: HTTP, proxy, clients);
the CPU per request of the replica, Ray Serve's proxy, Ray's other processes and the clients.
The targets: >= 3x the sequential throughput with 16 clients, p50 within 2x of a request alone.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
    return xs[k]


def _build(work: Path, args) -> dict:
    """The tiny model, data, an empty store and a random predictor; returns the serving config."""
    import torch

    from l2s_data.datasets import make_synthetic
    from l2s_data.models import make_tiny
    from l2s_data.models import load_adapter
    from l2s_data.steer import Predictor, PredictorMeta, save_predictor
    from l2s_data.store import Store

    ckpt = make_tiny("llava", work / "model")
    make_synthetic("synthetic-safety", work / "data", n=args.requests)
    store = Store.open(work / "store", create=True)
    d = load_adapter(ckpt).hidden_size
    torch.manual_seed(0)
    meta = PredictorMeta({"recipe": "none", "view": "input", "position": "prompt_last", "layer": 3},
                         {"recipe": "none", "view": "p2s", "position": "completion_last", "layer": 1},
                         d, d, 16, store.snapshot().id)
    save_predictor(work / "predictor.safetensors", Predictor(d, d, 16), meta)
    return {
        "model": {"path": str(ckpt)},
        "data": {"path": str(work / "data"), "task": "safety"},
        "steering": {"layer": 1, "methods": ["none", "prompt-only", "l2s"], "alphas": [2.0]},
        "l2s": {"predictor": str(work / "predictor.safetensors"), "input_layer": 3},
        "generation": {"max_new_tokens": args.tokens},
        "run": {"store": str(work / "store")},
        "serve": {"alpha": 2.0, "model_name": "tiny-llava", "max_batch_size": args.batch,
                  "batch_wait_timeout_s": args.wait, "max_ongoing_requests": 4 * args.clients,
                  "cpus_per_replica": 1, "replicas": 1, "name": "bench"},
    }


def _bodies(work: Path, args) -> list[dict]:
    from l2s_data.datasets import read_dataset

    ds = read_dataset(work / "data")
    ids = sorted(ds.samples["sample_id"].to_pylist())[: args.requests]
    methods = ["none", "prompt-only", "l2s"]
    out = []
    for i, sid in enumerate(ids):
        buf = io.BytesIO()
        ds.load_image(sid).save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        out.append({"model": f"tiny-llava:{methods[i % 3]}", "max_tokens": args.tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                              {"type": "text", "text": ds.query(sid)}]}]})
    return out


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this process (the clients) and of the Ray processes it started, by role."""
    import psutil

    me = psutil.Process()
    t = me.cpu_times()
    out = {"replica": 0.0, "proxy": 0.0, "ray": 0.0, "clients": t.user + t.system}
    for p in me.children(recursive=True):
        try:
            title = " ".join(p.cmdline())
            t = p.cpu_times()
        except psutil.Error:  # a worker that ended meanwhile
            continue
        role = "replica" if "ServeReplica" in title else "proxy" if "ProxyActor" in title else "ray"
        out[role] += t.user + t.system
    return out


def _run(url: str, bodies: list[dict], clients: int) -> tuple[float, list[float], float, dict[str, float]]:
    """Wall time, per-request latencies, the mean batch size a request was answered in, and
    where a request's time went (medians: waiting for its batch, the batch's run, and the rest:
    HTTP, Ray Serve's proxy, parsing, the clients), of ``bodies`` sent by ``clients`` closed-loop
    clients."""
    # Light clients (the standard library's HTTP client, one keep-alive connection each, bodies
    # serialised before the clock starts): they share the server's cores, and their CPU is
    # time the server does not get.
    where = urllib.parse.urlsplit(url)
    queue = [json.dumps(b).encode() for b in bodies]
    lock = threading.Lock()
    lat: list[float] = []
    errors: list[str] = []
    batch_sizes: list[int] = []
    spans: dict[str, list[float]] = {"parse": [], "queued": [], "batch": [], "outside": []}

    def client() -> None:
        c = http.client.HTTPConnection(where.hostname, where.port, timeout=600)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop(0)
                t0 = time.perf_counter()
                c.request("POST", f"{where.path}/chat/completions", body=body,
                          headers={"Content-Type": "application/json"})
                r = c.getresponse()
                text = r.read()
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    if r.status != 200:
                        errors.append(text[:200].decode(errors="replace"))
                    else:
                        info = json.loads(text)["l2s"]
                        batch_sizes.append(info["batch_size"])
                        t = info["timing"]
                        spans["parse"].append(t["parse_s"])
                        spans["queued"].append(t["queued_s"])
                        spans["batch"].append(t["batch_s"])
                        spans["outside"].append(dt - t["parse_s"] - t["queued_s"] - t["batch_s"])
        finally:
            c.close()

    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu1 = _cpu_seconds()
    for role in cpu1:  # CPU seconds per request, each role; and how many of the cores were busy
        spans[f"cpu_{role}"] = [(cpu1[role] - cpu0.get(role, 0.0)) / len(bodies)]
    spans["cores_busy"] = [sum(cpu1[r] - cpu0.get(r, 0.0) for r in cpu1) / wall]
    if errors:
        raise SystemExit(f"{len(errors)} request(s) failed, e.g. {errors[0]}")
    return wall, lat, statistics.mean(batch_sizes), {k: statistics.median(v) for k, v in spans.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16, help="the replica's max_batch_size")
    ap.add_argument("--wait", type=float, default=0.02, help="the replica's batch_wait_timeout_s")
    ap.add_argument("--tokens", type=int, default=16, help="max_tokens of every request")
    args = ap.parse_args(argv)

    import ray

    from l2s_data.serve import deploy, parse_serve_config

    print(f"uptime: {os.popen('uptime').read().strip()}")
    work = Path(tempfile.mkdtemp(prefix="l2s-bench-serve-"))
    cfg = parse_serve_config(_build(work, args), source="(benchmark)")
    bodies = _bodies(work, args)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        svc = deploy(cfg, port=_free_port())
        _run(svc.url, bodies[: min(8, len(bodies))], 1)              # warm-up: first calls, caches
        _run(svc.url, bodies[: min(2 * args.clients, len(bodies))], args.clients)
        seq_wall, seq_lat, seq_b, seq_t = _run(svc.url, bodies, 1)
        par_wall, par_lat, par_b, par_t = _run(svc.url, bodies, args.clients)
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)  # the folder this run made
    n = len(bodies)
    seq_rps, par_rps = n / seq_wall, n / par_wall
    p50_alone = statistics.median(seq_lat)
    print(f"tiny LLaVA, one CPU replica (1 torch thread), {n} image requests of at most {args.tokens} tokens, "
          f"greedy, methods none/prompt-only/L2S in turn; max_batch_size {args.batch}, wait {args.wait} s")
    cols = ("req/s", "p50 s", "p90 s", "p99 s", "batch", "parse", "queued", "run", "outside")
    print(f"{'':14}" + "".join(f"{c:>8}" for c in cols))
    runs = (("alone", seq_rps, seq_lat, seq_b, seq_t), (f"{args.clients} clients", par_rps, par_lat, par_b, par_t))
    for name, rps, lat, b, t in runs:
        print(f"{name:14}{rps:8.2f}{_percentile(lat, 50):8.3f}{_percentile(lat, 90):8.3f}{_percentile(lat, 99):8.3f}"
              f"{b:8.1f}{t['parse']:8.3f}{t['queued']:8.3f}{t['batch']:8.3f}{t['outside']:8.3f}")
    print("(batch: the mean number of rows of the batch that answered a request; parse / queued / run / outside: "
          "medians, in s, of the replica reading and parsing a request, its wait for its batch to start, its batch's "
          "run, and the rest of its latency: HTTP, Ray Serve's proxy, the clients)")
    roles = ("replica", "proxy", "ray", "clients")
    print(f"{'CPU ms/request':14}" + "".join(f"{r:>8}" for r in roles) + f"{'cores':>8}")
    for name, _, _, _, t in runs:
        print(f"{name:14}" + "".join(f"{1e3 * t['cpu_' + r]:8.1f}" for r in roles) + f"{t['cores_busy']:8.2f}")
    print("(CPU per request of the replica, Ray Serve's proxy, Ray's other processes and this process's clients; "
          "cores: CPU seconds of all of them per second of the run, on a 2-core machine shared with other work)")
    print(f"throughput ratio ({args.clients} clients / alone): {par_rps / seq_rps:.2f}x (target >= 3x)")
    print(f"p50 under load / p50 alone: {_percentile(par_lat, 50) / p50_alone:.2f}x (target <= 2x)")
    print(f"(closed loop: mean latency = {args.clients} clients / throughput, so a mean under load within 2x of "
          f"alone needs {args.clients / 2:g}x the sequential throughput; measured mean ratio "
          f"{statistics.mean(par_lat) / statistics.mean(seq_lat):.2f}x)")
    print(f"uptime: {os.popen('uptime').read().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
