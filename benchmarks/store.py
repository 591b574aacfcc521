"""Read throughput of the store's streaming loader, as ratios to baselines measured in this run.

    python benchmarks/store.py                 # 64k rows x 4096 float16 (512 MiB per copy)
    python benchmarks/store.py --rows 8192     # a quicker run
    make bench-store

The same activations are written four ways into a temporary folder (removed at the end):

- the store (Zarr shards), read with ``store.columns(..., in_memory=False, dtype="stored")``:
  the streaming path, shuffled chunks and buffer, float16 out as stored, like the memmap; and
  again with ``where="split = 'train'"`` (4 rows of every 5: every chunk is mapped and 80% of
  its rows taken);
- a raw ``.npy``, read with a numpy memmap in batch-sized slices, and gathered in shuffled row
  batches (what a shuffled memmap loader does);
- one ``torch.save`` file of a per-sample dict per row, read back with ``torch.load`` (the
  reference L2S cache format);
- an Arrow IPC file read in shuffled row batches with ``Table.take`` (the layout of HF
  datasets, which SAELens caches in).

Every file is read once before timing so all paths start from the page cache; each path
reports its best of ``--repeats``, timed round robin. Printed numbers are bytes of
activations delivered per second, and ratios.

The loader checks each chunk's crc32c the first time the process reads it (``verify="once"``,
the default), so its first epoch hashes all 512 MiB and later ones do not: the first epoch is
printed on its own, and a second loader with ``verify="always"`` (hash on every read) is timed
in the same rounds.
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
REPEATS = 3


def _best(fn, repeats: int) -> tuple[float, int]:
    best, nbytes = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        nbytes = fn()
        best = min(best, time.perf_counter() - t0)
    return best, nbytes


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
    print(f"# {n} rows x {d} float16 = {n * d * 2 / 2**20:.0f} MiB, batch {bs}, best of {args.repeats}; in {work}")
    try:
        data = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32).astype(np.float16)
        ids = [f"{i:012x}" for i in range(n)]

        # store
        store = Store.open(work / "store", create=True)
        rid = store.put_recipe({"bench": "store", "rows": n, "dim": d}, name="bench")
        store.put_samples(
            pa.table({"sample_id": ids, "query": [""] * n, "image_path": [""] * n, "image_sha256": ["0" * 64] * n,
                      "width": pa.array([1] * n, pa.int32()), "height": pa.array([1] * n, pa.int32())}),
            pa.table({"dataset": ["bench"] * n, "subset": ["all"] * n, "question_id": ids, "sample_id": ids,
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
        ds_always = store.columns([key], batch_size=bs, in_memory=False, dtype="stored", seed=1, verify="always")
        ds_where = store.columns([key], where="split = 'train'", batch_size=bs, in_memory=False, dtype="stored", seed=1)
        epochs = iter(range(1 << 30))

        def read_with(d) -> int:
            d.set_epoch(next(epochs))  # a new shuffle each repeat, as in training
            total = 0
            for (x,) in d:
                total += x.numel() * x.element_size()
            return total

        def read_store() -> int:
            return read_with(ds)

        def read_store_always() -> int:
            return read_with(ds_always)

        def read_store_where() -> int:
            return read_with(ds_where)

        def read_memmap() -> int:
            mm = np.load(work / "raw.npy", mmap_mode="r")
            total = 0
            for s in range(0, n, bs):
                x = torch.from_numpy(np.array(mm[s : s + bs]))
                total += x.numel() * x.element_size()
            return total

        def read_memmap_shuffled() -> int:
            mm = np.load(work / "raw.npy", mmap_mode="r")
            order = np.random.default_rng(1).permutation(n)
            total = 0
            for s in range(0, n, bs):
                x = torch.from_numpy(np.take(mm, np.sort(order[s : s + bs]), axis=0))
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

        secs, nbytes = _best(read_store, 1)  # first epoch: every chunk's crc32c checked
        print(f"# store loader, first epoch (crc32c of every chunk): {nbytes / secs / 2**20:.0f} MiB/s")
        paths = [("store loader (streaming, shuffled)", read_store),
                 ("store loader, verify='always'", read_store_always),
                 ("store loader, where= (80% of rows)", read_store_where),
                 ("numpy memmap (sequential)", read_memmap),
                 ("numpy memmap (shuffled rows)", read_memmap_shuffled),
                 ("torch.load per-sample dicts", read_torch_load), ("Arrow IPC rows (shuffled take)", read_arrow)]
        best = {name: float("inf") for name, _ in paths}
        results = {}
        for _ in range(args.repeats):  # round robin, so a noisy neighbour hits every path alike
            for name, fn in paths:
                secs, nbytes = _best(fn, 1)
                best[name] = min(best[name], secs)
                results[name] = nbytes / best[name]
        ref = results["store loader (streaming, shuffled)"]
        print(f"{'path':40s} {'MiB/s':>10s} {'store / path':>13s}")
        for name, bps in results.items():
            print(f"{name:40s} {bps / 2**20:10.0f} {ref / bps:13.2f}x")
        mm, tl = ref / results["numpy memmap (sequential)"], ref / results["torch.load per-sample dicts"]
        ms = ref / results["numpy memmap (shuffled rows)"]
        print(f"targets: >= 0.5x memmap: {mm:.2f}x sequential {'ok' if mm >= 0.5 else 'MISSED'} "
              f"({ms:.2f}x shuffled); >= 10x torch.load: {tl:.1f}x {'ok' if tl >= 10 else 'MISSED'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
