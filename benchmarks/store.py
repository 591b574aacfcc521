"""Read throughput of the store's streaming loader, as ratios to baselines measured in this run.

    python benchmarks/store.py                 # 64k rows x 4096 float16 (512 MiB per copy)
    python benchmarks/store.py --rows 8192     # a quicker run
    make bench-store

The same activations are written four ways into a temporary folder (removed at the end):

- the store (Zarr shards), read with ``store.columns(..., dtype="stored")`` (float16 out as
  stored, like the memmap): the streaming path (``in_memory=False``); the in-memory path's
  first epoch (reads the chunks while serving batches) and its later epochs (reads nothing);
  the streaming path with half the default shuffle buffer (4 chunks), and without a thread
  reading the next round (``prefetch=False``; the default on two cores or more); and the streaming path
  with ``where="split = 'train'"`` (4 rows of every 5);
- a raw ``.npy`` read with a numpy memmap: in batch-sized slices (sequential), and in the very
  batches the loader yields, same rows in the same order (``np.take`` per batch);
- one ``torch.save`` file of a per-sample dict per row, read back with ``torch.load`` (the
  reference L2S cache format);
- an Arrow IPC file read in shuffled row batches with ``Table.take`` (the layout of HF
  datasets, which SAELens caches in).

Every file is read once before timing so all paths start from the page cache. Epoch j of the
loader and of the shuffled memmap deliver the same batches; the paths are timed round robin
(``--repeats`` rounds) so a noisy neighbour hits every path alike; each path reports its best
and its median round. Printed numbers are bytes of activations delivered per second of wall
time, and per second of this process's CPU time (user + system: on a shared machine it leaves
out the time other jobs hold the cores), and ratios of both. The loader checks the crc32c of
every chunk it reads (the in-memory path's later epochs read none).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from l2s_data.store import Key, Store

# -- knobs ---------------------------------------------------------------------------------
ROWS = 65536
DIM = 4096
BATCH = 64
SHARD_ROWS = 4096
TORCH_LOAD_ROWS = 4096  # torch.load of 64k small files takes minutes; bytes/s is what counts
ARROW_ROWS = 8192       # rows of shuffled takes timed (from the whole table): random takes are slow
REPEATS = 5


def _warm(path: Path) -> None:
    for p in [path] if path.is_file() else path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=ROWS)
    ap.add_argument("--dim", type=int, default=DIM)
    ap.add_argument("--batch-size", type=int, default=BATCH)
    ap.add_argument("--torch-load-rows", type=int, default=TORCH_LOAD_ROWS)
    ap.add_argument("--arrow-rows", type=int, default=ARROW_ROWS)
    ap.add_argument("--repeats", type=int, default=REPEATS)
    ap.add_argument("--workdir", default=None, help="where the temporary copies go (default: system temp)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n, d, bs = args.rows, args.dim, args.batch_size
    work = Path(tempfile.mkdtemp(prefix="l2s-bench-store-", dir=args.workdir))
    print(f"# {n} rows x {d} float16 = {n * d * 2 / 2**20:.0f} MiB, batch {bs}, {args.repeats} rounds; in {work}")
    try:
        data = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32).astype(np.float16)
        ids = [f"{i:012x}" for i in range(n)]

        # store
        store = Store.open(work / "store", create=True)
        rid = store.put_recipe({"bench": "store", "rows": n, "dim": d}, name="bench")
        store.put(
            "samples",
            pa.table({"sample_id": ids, "query": [""] * n, "image_path": [""] * n, "image_sha256": ["0" * 64] * n,
                      "width": pa.array([1] * n, pa.int32()), "height": pa.array([1] * n, pa.int32())}),
            memberships=pa.table({"dataset": ["bench"] * n, "subset": ["all"] * n, "question_id": ids, "sample_id": ids,
                                  "category": ["c"] * n, "label": [None] * n,
                                  "split": ["test" if i % 5 == 0 else "train" for i in range(n)]}),
        )
        for s in range(0, n, SHARD_ROWS):
            with store.shard_writer(f"s{s // SHARD_ROWS:05d}", rid, ids[s : s + SHARD_ROWS]) as w:
                w.write("p2s", "completion_last", 14, data[s : s + SHARD_ROWS], "float16")
        # raw memmap
        np.save(work / "raw.npy", data)
        # reference L2S: torch.save of one dict per sample
        (work / "pt").mkdir()
        m = min(args.torch_load_rows, n)
        for i in range(m):
            torch.save({"sample_id": ids[i], "p2s": torch.from_numpy(data[i].copy())}, work / "pt" / f"{i}.pt")
        # Arrow IPC rows (HF datasets layout): one fixed-size list column
        flat = pa.array(data.reshape(-1))
        table = pa.table({"sample_id": ids, "p2s": pa.FixedSizeListArray.from_arrays(flat, d)})
        with pa.OSFile(str(work / "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table, max_chunksize=1000)
        del table, flat
        for p in (work / "store", work / "raw.npy", work / "pt", work / "rows.arrow"):
            _warm(p)

        key = Key("bench", "p2s", "completion_last", 14)
        t0 = time.perf_counter()
        ds = store.columns([key], batch_size=bs, in_memory=False, dtype="stored", seed=1)
        print(f"# loader set-up (snapshot, index; once per training run): {time.perf_counter() - t0:.2f} s")
        ds_mem = store.columns([key], batch_size=bs, in_memory=True, dtype="stored", seed=1)
        ds_where = store.columns([key], where="split = 'train'", batch_size=bs, in_memory=False, dtype="stored", seed=1)
        rounds = args.repeats
        # The loader's order in each epoch timed (streaming and in-memory yield the same batches).
        order_ds = store.columns([key], batch_size=bs, in_memory=False, dtype="stored", seed=1, with_ids=True)
        orders = []
        for epoch in range(rounds):
            order_ds.set_epoch(epoch)
            orders.append([np.array([int(s, 16) for s in b], np.int64) for _, b in order_ds])
        ds_mem.set_epoch(0)
        if sum(len(b) for b in orders[0]) != n or not all(
            torch.equal(x, torch.from_numpy(data[o])) for (x,), o in zip(ds_mem, orders[0])
        ):
            raise SystemExit("the in-memory loader returned other rows than the streaming one")
        epoch_now = [0]

        def read_with(d, fresh: bool = False) -> int:
            d.set_epoch(epoch_now[0])
            if fresh:
                d.release()  # the in-memory copy is dropped: this epoch reads every chunk again
            total = 0
            for (x,) in d:
                total += x.numel() * x.element_size()
            return total

        def read_memmap() -> int:
            mm = np.load(work / "raw.npy", mmap_mode="r")
            total = 0
            for s in range(0, n, bs):
                x = torch.from_numpy(np.array(mm[s : s + bs]))
                total += x.numel() * x.element_size()
            return total

        def read_memmap_shuffled() -> int:
            mm = np.load(work / "raw.npy", mmap_mode="r")
            total = 0
            for o in orders[epoch_now[0]]:
                x = torch.from_numpy(np.take(mm, o, axis=0))
                total += x.numel() * x.element_size()
            return total

        def read_torch_load() -> int:
            total = 0
            order = np.random.default_rng(1).permutation(m)
            for s in range(0, m, bs):
                x = torch.stack([torch.load(work / "pt" / f"{i}.pt")["p2s"] for i in order[s : s + bs]])
                total += x.numel() * x.element_size()
            return total

        def read_arrow() -> int:
            src = pa.memory_map(str(work / "rows.arrow"), "r")
            t = pa.ipc.open_file(src).read_all()
            order = np.random.default_rng(1).permutation(n)[: args.arrow_rows]
            total = 0
            for s in range(0, len(order), bs):
                col = t.column("p2s").take(pa.array(order[s : s + bs])).combine_chunks()
                x = torch.from_numpy(col.flatten().to_numpy(zero_copy_only=False).reshape(-1, d).copy())
                total += x.numel() * x.element_size()
            return total

        got = next(iter(store.columns([key], batch_size=4, shuffle=False, in_memory=False, dtype="stored")))[0]
        if not torch.equal(got, torch.from_numpy(data[:4])):
            raise SystemExit("store returned different rows than were written")

        stream, first, later = ("store loader, streaming", "store loader, in memory: first epoch",
                                "store loader, in memory: later epochs")
        mm_shuf, mm_seq = "numpy memmap, the loader's batches", "numpy memmap, sequential"
        ds_small = store.columns([key], batch_size=bs, in_memory=False, dtype="stored", seed=1,
                                 buffer_rows=ds.buffer_rows // 2)
        ds_pre = store.columns([key], batch_size=bs, in_memory=False, dtype="stored", seed=1, prefetch=False)
        paths = [(stream, lambda: read_with(ds)),
                 ("store loader, streaming, no prefetch thread", lambda: read_with(ds_pre)),
                 ("store loader, streaming, half the buffer", lambda: read_with(ds_small)),
                 (first, lambda: read_with(ds_mem, fresh=True)),
                 (later, lambda: read_with(ds_mem)),
                 ("store loader, streaming, where= (80% of rows)", lambda: read_with(ds_where)),
                 (mm_shuf, read_memmap_shuffled), (mm_seq, read_memmap),
                 ("torch.load per-sample dicts", read_torch_load), ("Arrow IPC rows (shuffled take)", read_arrow)]
        wall: dict[str, list[float]] = {name: [] for name, _ in paths}
        cpu: dict[str, list[float]] = {name: [] for name, _ in paths}
        for j in range(rounds):  # round robin; every path reads epoch j's order in round j
            epoch_now[0] = j
            for name, fn in paths:
                t0, c0 = time.perf_counter(), time.process_time()
                nbytes = fn()
                wall[name].append(nbytes / (time.perf_counter() - t0))
                cpu[name].append(nbytes / max(time.process_time() - c0, 1e-9))
        best = {name: max(r) for name, r in wall.items()}
        best_cpu = {name: max(r) for name, r in cpu.items()}
        print("MiB/s of wall-clock time (best and median round) and of this process's CPU time (best round:")
        print("user + system, so a busy neighbour's share of the cores is left out); ratios to the two memmaps.")
        print(f"{'path':46s} {'wall':>6s} {'median':>7s} {'cpu':>6s}   {'/ memmap, same batches':>22s}"
              f"   {'/ memmap, sequential':>20s}")
        for name in wall:
            print(f"{name:46s} {best[name] / 2**20:6.0f} {np.median(wall[name]) / 2**20:7.0f} "
                  f"{best_cpu[name] / 2**20:6.0f}   wall {best[name] / best[mm_shuf]:4.2f}x cpu "
                  f"{best_cpu[name] / best_cpu[mm_shuf]:4.2f}x   wall {best[name] / best[mm_seq]:4.2f}x cpu "
                  f"{best_cpu[name] / best_cpu[mm_seq]:4.2f}x")
        print("targets (best round of each path; wall-clock, then CPU time):")
        for name, base, want in ((stream, mm_shuf, 0.8), (first, mm_shuf, 0.8), (later, mm_shuf, 0.8),
                                 (stream, mm_seq, 0.5)):
            r, rc = best[name] / best[base], best_cpu[name] / best_cpu[base]
            print(f"  {name} / {base}: {r:.2f}x, cpu {rc:.2f}x (>= {want}x: "
                  f"{'ok' if r >= want else 'MISSED'}, cpu {'ok' if rc >= want else 'MISSED'})")
        tl = best[stream] / best["torch.load per-sample dicts"]
        print(f"  {stream} / torch.load: {tl:.0f}x (>= 10x: {'ok' if tl >= 10 else 'MISSED'})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
