"""Catalog benchmark: SQL, `store info` and loader set-up on stores of 100k to 3M manifest rows.

    python benchmarks/catalog.py                      # 100k, 1M and 3M rows
    python benchmarks/catalog.py --rows 100000        # one size
    python benchmarks/catalog.py --scale 100000 1000000 10000000 --commits 10000
                                                      # one store grown as an extraction writes it
    python benchmarks/catalog.py --repeated 20        # one small query, again and again

Each store is built through the writer (10,000 samples, rows / 10,000 keys, shards of 256
samples; D = 8 so that manifests, not arrays, dominate), once loose (one manifest per shard)
and once compacted. Every measurement runs in a fresh process, as `l2s sql` does, and reports
its time after the imports (opening the store, the snapshot, the catalog and the query) and
the process's peak RSS. The baseline is DuckDB's own ``read_parquet`` over the same
manifest files in the same run: it reads them with no checksum, no path check and no view.
Targets (issue: catalog scale): at 1.5M rows, count / JOIN / GROUP BY under 1 s and 1 GB. The
compaction between the two layouts is timed once, with its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUERIES = {
    "count": "SELECT count(*) FROM manifests",
    "join": "SELECT m.category, count(*) AS n FROM manifests k JOIN memberships m USING (sample_id) "
            "WHERE k.view = 'p2s' GROUP BY ALL ORDER BY 1",
    "group by": "SELECT view, layer, count(*) AS n, avg(norm) AS norm FROM manifests GROUP BY ALL",
}

CHILD = r"""
import json, sys, time
kind, url, arg = sys.argv[1], sys.argv[2], sys.argv[3]
import duckdb, pyarrow, torch  # imports are not what is measured: a CLI pays them once either way
from l2s_data.store import Key, Store
from l2s_data.store import catalog, loader, ops
imports_mb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) / 1024
t0 = time.perf_counter()
if kind == "open":  # a catalog over the store's snapshot, ready for its first statement
    s = Store.open(url)
    with s.catalog() as cat:
        out = cat.query("SELECT 1").num_rows
elif kind == "sql":
    out = Store.open(url).sql(arg).num_rows
elif kind == "raw":
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    out = con.sql(arg).fetchall()[0][0]
elif kind == "info":
    out = Store.open(url).admin.info().rows
elif kind == "compact":
    out = Store.open(url).admin.compact()[0]
elif kind == "columns":
    ds = Store.open(url).columns((Key("bench", "input", "prompt_last", 0), Key("bench", "p2s", "completion_last", 0)),
                                 batch_size=256, seed=0)
    out = 0
    for epoch in range(2):
        ds.set_epoch(epoch)
        out += sum(x.shape[0] for x, _ in ds)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report its parent's peak.
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"s": time.perf_counter() - t0, "rss_mb": hwm / 1024, "imports_mb": imports_mb, "out": out}))
"""


def build(url: Path, rows: int, n_samples: int = 10_000) -> None:
    from l2s_data.store import Store

    n_keys = max(2, rows // n_samples)
    keys = [("input" if j % 2 == 0 else "p2s", "prompt_last" if j % 2 == 0 else "completion_last", j // 2)
            for j in range(n_keys)]
    store = Store.open(url, create=True)
    rid = store.put_recipe({"bench": rows}, name="bench")
    ids = [f"{i:032x}" for i in range(n_samples)]
    _put_tables(store, ids)
    block = np.random.default_rng(0).standard_normal((256, 8)).astype(np.float16)
    for k, lo in enumerate(range(0, n_samples, 256)):
        part = ids[lo:lo + 256]
        with store.shard_writer(f"s-{k:05d}", rid, part) as w:
            for view, pos, layer in keys:
                w.write(view, pos, layer, block[: len(part)], "float16")


def run(kind: str, url: Path, arg: str = "-") -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, kind, str(url), arg], capture_output=True, text=True,
                       cwd=ROOT, check=False)
    if p.returncode:
        raise SystemExit(f"{kind} failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def best(kind: str, url: Path, arg: str = "-", repeats: int = 3) -> dict:
    runs = [run(kind, url, arg) for _ in range(repeats)]
    return {"s": min(r["s"] for r in runs), "rss_mb": max(r["rss_mb"] for r in runs),
            "imports_mb": max(r["imports_mb"] for r in runs), "out": runs[0]["out"]}


#: The layout of a 32-layer extraction: 128 keys a sample (2 views x 2 positions x 32 layers).
SCALE_KEYS = [(v, p, layer) for v in ("input", "p2s") for p in ("prompt_last", "completion_last") for layer in range(32)]
SCALE_SHARD = 64


def scale(sizes: list[int], repeats: int, commits: int) -> None:
    """Write rate, catalog opening and queries while one store grows to each size in ``sizes``,
    written as an extraction writes it (128 keys a sample, 64-sample shards, ``shard_writer``,
    the commit's own compaction step included); then a commit's cost at 10 and at ``commits``
    loose manifests. Ratios are against the smallest size (write rate) and the first commits."""
    from l2s_data.store import Store

    rows_per_shard = SCALE_SHARD * len(SCALE_KEYS)
    # The rate of the writes since the previous size: every commit and compaction step among them.
    print(f"| manifest rows | write rows/s since the last size | / the first | open s | open RSS MB "
          f"(imports) | count s | join s | group by s | query peak RSS MB | files |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    block = np.random.default_rng(0).standard_normal((SCALE_SHARD, 8)).astype(np.float16)
    with tempfile.TemporaryDirectory() as tmp:
        url = Path(tmp) / "store"
        store = Store.open(url, create=True)
        rid = store.put_recipe({"bench": "scale"}, name="bench")
        _put_tables(store, [f"{i:032x}" for i in range(sizes[-1] // len(SCALE_KEYS) + SCALE_SHARD)])
        shard, first_rate, times = 0, None, []
        for size in sizes:
            begin = shard
            while shard * rows_per_shard < size:
                ids = [f"{i:032x}" for i in range(shard * SCALE_SHARD, (shard + 1) * SCALE_SHARD)]
                t = time.perf_counter()
                with store.shard_writer(f"s-{shard:06d}", rid, ids) as w:
                    for view, pos, layer in SCALE_KEYS:
                        w.write(view, pos, layer, block, "float16")
                times.append(time.perf_counter() - t)
                shard += 1
            rate = rows_per_shard * (shard - begin) / sum(times[begin:])
            first_rate = first_rate or rate
            o = best("open", url, "-", repeats)
            q = {name: best("sql", url, sql, repeats) for name, sql in QUERIES.items()}
            files = len(list((url / "manifests").glob("*.parquet")))
            print(f"| {shard * rows_per_shard:,} | {rate:,.0f} | {rate / first_rate:.2f}x | {o['s']:.2f} | "
                  f"{o['rss_mb']:.0f} ({o['imports_mb']:.0f}) | {q['count']['s']:.2f} | {q['join']['s']:.2f} | "
                  f"{q['group by']['s']:.2f} | {max(r['rss_mb'] for r in q.values()):.0f} | {files} |", flush=True)
    if commits:
        _commit_cost(commits)


def _put_tables(store, ids: list[str]) -> None:
    from l2s_data.schemas import MEMBERSHIPS, SAMPLES

    import pyarrow as pa

    store.put(
        "samples",
        pa.Table.from_pylist([{"sample_id": s, "query": "q", "image_path": "i.png", "image_sha256": "0" * 64,
                               "width": 8, "height": 8} for s in ids], schema=SAMPLES),
        memberships=pa.Table.from_pylist([{"dataset": "bench", "subset": "all", "question_id": str(i), "sample_id": s,
                                           "category": f"c{i % 13}", "label": None, "split": "train"}
                                          for i, s in enumerate(ids)], schema=MEMBERSHIPS),
    )


def _commit_cost(commits: int) -> None:
    """Median time of ``ShardWriter.commit`` (the create, the checks, the compaction step's
    look) with 10 loose manifests present, and with ``commits``; no step folds them meanwhile.
    Then the mean over the first and the last commits, looks at the folder included."""
    from l2s_data.store import Store, compaction

    compaction.LOOSE_FILES = commits + 1  # keep every manifest loose: the worst case for a commit
    one = np.zeros((1, 8), np.float16)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "store", create=True)
        rid = store.put_recipe({"bench": "commit"}, name="bench")
        cost = []
        for k in range(commits):
            with store.shard_writer(f"c-{k:06d}", rid, [f"{k:032x}"]) as w:
                w.write("input", "prompt_last", 0, one, "float32")
                t = time.perf_counter()
                w.commit()
                cost.append(time.perf_counter() - t)
        early, late = float(np.median(cost[10:30])), float(np.median(cost[-20:]))
        print(f"\ncommit: {early * 1e3:.1f} ms median at 10-30 manifests, {late * 1e3:.1f} ms at "
              f"{commits - 20:,}-{commits:,} ({late / early:.2f}x)")
        # The mean over a window includes the commits whose compaction step counts the loose
        # files (one in LOOSE_FILES // LOOK_SHARE, and each process's first).
        span = max(1, min(1000, commits // 4))
        first, last = float(np.mean(cost[:span])), float(np.mean(cost[-span:]))
        print(f"commit: {first * 1e3:.1f} ms mean over the first {span:,} commits, {last * 1e3:.1f} ms over "
              f"the last {span:,} ({last / first:.2f}x)")


def repeated(calls: int, repeats: int) -> None:
    """Per-call cost of ``store.sql`` run again on an unchanged small store (its catalog reused),
    against the baseline of the same statement on a catalog built for it and closed after it
    (as ``store.sql`` did for every statement before reuse), best of ``repeats`` rounds."""
    from l2s_data.store import Store, catalog_pool

    q = "SELECT split, count(*) AS n FROM memberships JOIN manifests USING (sample_id) WHERE layer = ? GROUP BY ALL"
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "store", create=True)
        ids = [f"{i:032x}" for i in range(64)]
        _put_tables(store, ids)
        rid = store.put_recipe({"bench": "repeated"}, name="bench")
        for k in range(4):
            with store.shard_writer(f"r-{k}", rid, ids[16 * k:16 * (k + 1)]) as w:
                for layer in (1, 2):
                    w.write("p2s", "completion_last", layer, np.ones((16, 8), np.float32), "float32")

        def fresh() -> None:
            catalog_pool.clear()  # closes the idle catalog: the next statement builds its own
            store.sql(q, params=[1])

        def per_call(fn) -> float:
            rounds = []
            for _ in range(repeats):
                t = time.perf_counter()
                for _ in range(calls):
                    fn()
                rounds.append((time.perf_counter() - t) / calls)
            return min(rounds)

        a, b = per_call(lambda: store.sql(q, params=[1])), per_call(fresh)
        print(f"store.sql, unchanged store (reused catalog): {a * 1e3:.1f} ms/call; a catalog built per "
              f"statement: {b * 1e3:.1f} ms/call ({b / a:.1f}x); best of {repeats} x {calls} calls")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000, 3_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=int, nargs="*", metavar="ROWS",
                    help="grow one store in the layout of a 32-layer extraction through these sizes "
                         "(e.g. 100000 1000000 10000000), printing write rate, catalog opening and queries")
    ap.add_argument("--commits", type=int, default=0, metavar="N",
                    help="with --scale: also time a commit at 10 and at N loose manifests")
    ap.add_argument("--repeated", type=int, default=0, metavar="CALLS",
                    help="time one small query run CALLS times in a row on an unchanged store")
    args = ap.parse_args()
    if args.repeated:
        repeated(args.repeated, args.repeats)
        return
    if args.scale:
        scale(sorted(args.scale), args.repeats, args.commits)
        return
    from l2s_data.store import Store

    print("| rows | layout | what | l2s s | l2s peak RSS MB | read_parquet s | l2s / read_parquet |")
    print("|---:|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            url = Path(tmp) / f"store-{rows}"
            t = time.perf_counter()
            build(url, rows)
            built = time.perf_counter() - t
            for layout in ("loose", "compacted"):
                if layout == "compacted":
                    c = run("compact", url)  # once: it changes the store
                    print(f"| {rows:,} | loose -> compacted | `store compact` ({c['out']} files) | {c['s']:.2f} | "
                          f"{c['rss_mb']:.0f} | | |", flush=True)
                files = sorted(str(p) for p in (url / "manifests").glob("*.parquet"))
                source = f"read_parquet({json.dumps(files)[1:-1].join(['[', ']'])})".replace('"', "'")
                raw = {
                    "count": f"SELECT count(*) FROM {source}",
                    "join": f"SELECT count(*) FROM (SELECT m.category, count(*) FROM {source} k JOIN "
                            f"read_parquet('{url}/memberships/*.parquet') m USING (sample_id) "
                            f"WHERE k.view = 'p2s' GROUP BY ALL)",
                    "group by": f"SELECT count(*) FROM (SELECT view, layer, count(*), avg(norm) FROM {source} GROUP BY ALL)",
                }
                for name, q in QUERIES.items():
                    a, b = best("sql", url, q, args.repeats), best("raw", url, raw[name], args.repeats)
                    print(f"| {rows:,} | {layout} | `{name}` | {a['s']:.2f} | {a['rss_mb']:.0f} | {b['s']:.2f} | "
                          f"{a['s'] / b['s']:.1f}x |", flush=True)
                i = best("info", url, repeats=args.repeats)
                print(f"| {rows:,} | {layout} | `store info` | {i['s']:.2f} | {i['rss_mb']:.0f} | | |", flush=True)
                p = best("columns", url, repeats=args.repeats)
                print(f"| {rows:,} | {layout} | `columns()` one key, set-up + 2 epochs | {p['s']:.2f} | "
                      f"{p['rss_mb']:.0f} | | |", flush=True)
            print(f"<!-- built {rows:,} rows in {built:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
