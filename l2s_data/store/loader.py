"""Streaming keyed columns out of a store: a DataLoader-ready torch IterableDataset.

::

    ds = store.pairs(Key("input-llava", "input", "prompt_last", 14),
                     Key("safety-llava", "p2s", "completion_last", 14),
                     where="dataset = 'mmsb' AND split = 'train'", batch_size=64, seed=0)
    for epoch in range(100):
        ds.set_epoch(epoch)
        for x, y in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2):
            ...   # x [B, Dx], y [B, Dy] float32

Reads are chunk-granular (DESIGN 4.5): zarr gathers random single rows about 300x slower than
a memmap, whole chunks at page-cache speed. So the unit of work is one chunk of the first key's
array (all selected samples in it); units are shuffled and dealt out to ranks and DataLoader
workers. Each worker takes units ``buffer_rows`` rows at a time (a round: the shuffle buffer).
On a local disk a round costs no copy at all: its chunk files are mapped side by side into one
reserved address range (:mod:`l2s_data.store._vmap`), so the round is one ``[rows, D]`` array
over the page cache, and each batch is one ``take`` of randomly chosen rows of it into a
reused batch array: each byte is read once and written once, as in a plain memmap read. With
``verify="once"`` the chunks stay mapped between epochs (:class:`_Windows`). A ``where`` that
selects some rows of a chunk maps the chunk and takes those rows. The other
keys' rows come from their own chunks the same way when they line up with the first key's
(extraction writes the keys of a shard together, so they do); otherwise, on remote stores, or
where fixed mappings are unavailable, the round's rows are copied into one array first (a
small chunk cache serves keys stored in another order). Fewer than a batch of rows left at
the end of a round carry over into the next.

Each chunk's crc32c is checked the first time the process reads the file, and again if the
file changes (``verify="once"``); ``verify="always"`` hashes on every read.

Every epoch yields every selected row exactly once over all workers and ranks, in an order
that depends only on (seed, epoch, world size, worker count). A selection whose bytes fit
``memory_budget`` is read once into memory and then permuted per epoch (``in_memory=None``
picks automatically; ``False`` forces streaming).
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from l2s_data.errors import KeyNotFoundError, StoreError
from l2s_data.store._backend import Backend
from l2s_data.store import _vmap
from l2s_data.store._chunks import VERIFY_MODES, ArrayInfo, chunk_identity, map_chunk, place_chunk, read_chunk
from l2s_data.store.snapshot import Key

if TYPE_CHECKING:
    from l2s_data.store.store import Store

__all__ = ["KeyedDataset"]

_TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class KeyedDataset(torch.utils.data.IterableDataset):
    """Batches ``(col_0 [B, D_0], ..., col_k [B, D_k])`` (+ sample ids if ``with_ids``).

    Use with ``DataLoader(ds, batch_size=None, num_workers=...)``: the dataset batches itself.

    Args:
        keys: the columns to yield, in order.
        where: a SQL boolean expression over the columns of ``samples`` and ``memberships``
            (``split = 'train' AND category LIKE '0%'``); None = every sample having all keys.
        batch_size: rows per batch (the last batch of an epoch may be smaller).
        shuffle: shuffle chunk order and rows inside the buffer; False = storage order.
        seed: with the epoch (``set_epoch``), fixes the order.
        drop_last: drop each worker's final partial batch.
        buffer_rows: rows of the shuffle buffer (default: 8 chunks, at least 4 batches).
        in_memory: True / False / None (= when the selection fits ``memory_budget`` bytes).
        dtype: "float32" (default) or "stored" (float16 / bfloat16 tensors as stored).
        missing: "error" if a selected sample lacks a key, or "skip" it.
        verify: "once" (default) checks each chunk file's crc32c the first time this process
            reads it and again whenever the file changes (see ``_chunks.map_chunk``); "always"
            re-checks on every read. ``l2s store verify`` is the full check either way. With
            "once", a local store's chunk files stay mapped between epochs (``release()``).
        prefetch: read the next buffer's chunks in a background thread while batches go out
            (helps with free cores and remote stores; on a busy 2-core host it costs more).
        rank, world_size: split units across data-parallel ranks as well.
    """

    def __init__(self, store: Store, keys: Sequence[Key], *, where: str | None = None,
                 batch_size: int = 64, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 buffer_rows: int | None = None, in_memory: bool | None = None,
                 memory_budget: int = 2 << 30, dtype: str = "float32", with_ids: bool = False,
                 missing: str = "error", rank: int = 0, world_size: int = 1, epoch: int = 0,
                 cache_chunks: int = 64, prefetch: bool = False, verify: str = "once"):
        super().__init__()
        keys = tuple(keys)
        if not keys or not all(isinstance(k, Key) for k in keys):
            raise KeyNotFoundError(f"keys must be a non-empty sequence of Key(...), got {keys!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        if dtype not in ("float32", "stored"):
            raise ValueError(f"dtype must be 'float32' or 'stored', got {dtype!r}.")
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}.")
        if missing not in ("error", "skip"):
            raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}.")
        if not (0 <= rank < world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
        self.keys = keys
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.dtype = dtype
        self.with_ids = with_ids
        self.rank, self.world_size = rank, world_size
        self.epoch = int(epoch)
        self.cache_chunks = cache_chunks
        self.prefetch = prefetch
        self.verify = verify
        self._backend: Backend = store._backend
        snap = store.snapshot()
        self.snapshot_id = snap.id

        selected = None if where is None else _select(store, snap, where)
        indexes = [snap.index(k.recipe, k.view, k.position, k.layer) for k in keys]
        for k, idx in zip(keys, indexes):
            if not idx:
                raise KeyNotFoundError(
                    f"key {k} has no committed rows in snapshot {snap.id} of {store.url}; check it "
                    f"with `l2s sql \"SELECT DISTINCT recipe_id, view, position, layer FROM manifests\"`."
                )
        base = sorted(indexes[0]) if selected is None else sorted(selected)
        have = [s for s in base if all(s in idx for idx in indexes)]
        if len(have) != len(base) and missing == "error":
            lost = [s for s in base if s not in set(have)]
            raise KeyNotFoundError(
                f"{len(lost)} of {len(base)} selected sample(s) lack one of the keys "
                f"{[str(k) for k in keys]}, e.g. {lost[:3]}. Extract them, narrow `where`, or pass "
                f"missing='skip'."
            )
        self.skipped = len(base) - len(have)

        # Per key: the arrays it lives in, and (array index, row) of every selected sample.
        self._infos: list[list[ArrayInfo]] = []
        locs: list[np.ndarray] = []
        for idx in indexes:
            paths = sorted({idx[s][0] for s in have})
            pos = {p: i for i, p in enumerate(paths)}
            self._infos.append([snap.array_info(p) for p in paths])
            loc = np.array([(pos[idx[s][0]], idx[s][1]) for s in have], np.int64).reshape(-1, 2)
            locs.append(loc)
        # Storage order of the first key, so a unit (one chunk of key 0) is contiguous.
        if have:
            c0 = np.array([self._infos[0][a].chunk_rows for a in locs[0][:, 0]], np.int64)
            order = np.lexsort((locs[0][:, 1], locs[0][:, 1] // c0, locs[0][:, 0]))
        else:
            order = np.zeros(0, np.int64)
        self.sample_ids = [have[i] for i in order]
        self._locs = [loc[order] for loc in locs]
        if have:
            l0 = self._locs[0]
            chunk_of = l0[:, 1] // np.array([self._infos[0][a].chunk_rows for a in l0[:, 0]], np.int64)
            unit_key = l0[:, 0] * (1 << 32) + chunk_of
            starts = np.flatnonzero(np.r_[True, unit_key[1:] != unit_key[:-1]])
            self._units = np.stack([starts, np.r_[starts[1:], len(have)]], axis=1)
        else:
            self._units = np.zeros((0, 2), np.int64)
        # Per key and unit: is the unit one whole chunk of that key, rows in storage order? Then
        # it is memory-mapped as is; otherwise its rows are gathered (computed once, here).
        self._whole = [self._whole_chunks(k) for k in range(len(keys))]
        # Per key and unit: do its rows (all, or the selected few) lie in one chunk of the key?
        # Then the chunk is mapped whole and the rows are picked out of it (see _Windows).
        self._one_chunk = [self._in_one_chunk(k) for k in range(len(keys))]
        self.dims = [infos[0].dim if infos else 0 for infos in self._infos]
        self.num_rows = len(have)
        row_bytes = sum(infos[0].dim * infos[0].stored_dtype.itemsize for infos in self._infos if infos)
        self.nbytes = self.num_rows * row_bytes
        self.in_memory = self.nbytes <= memory_budget if in_memory is None else bool(in_memory)
        typical_chunk = self._infos[0][0].chunk_rows if have else 1
        self.buffer_rows = int(buffer_rows or max(8 * typical_chunk, 4 * batch_size))
        self._memory: list[np.ndarray] | None = None
        self._resident: tuple[int, list] | None = None  # (pid, per key a _Resident or None)
        self._chunk_ids: dict[int, tuple[list[tuple[int, int]], np.ndarray]] = {}

    def _whole_chunks(self, k: int) -> np.ndarray:
        """bool ``[n_units]``: unit u's rows of key k are exactly one whole chunk, in order."""
        units, loc, infos = self._units, self._locs[k], self._infos[k]
        if not len(units):
            return np.zeros(0, bool)
        chunk_rows = np.array([i.chunk_rows for i in infos], np.int64)[loc[:, 0]]
        rows = np.array([i.rows for i in infos], np.int64)[loc[:, 0]]
        follows = (loc[1:, 0] == loc[:-1, 0]) & (loc[1:, 1] == loc[:-1, 1] + 1)  # row i+1 after row i
        breaks = np.r_[0, np.cumsum(~follows)]
        s, e = units[:, 0], units[:, 1]
        r0, c = loc[s, 1], chunk_rows[s]
        return (breaks[e - 1] - breaks[s] == 0) & (r0 % c == 0) & (e - s == np.minimum(c, rows[s] - r0))

    def _in_one_chunk(self, k: int) -> np.ndarray:
        """bool ``[n_units]``: unit u's rows of key k all lie in one chunk of one array."""
        units, loc, infos = self._units, self._locs[k], self._infos[k]
        if not len(units):
            return np.zeros(0, bool)
        chunk = loc[:, 1] // np.array([i.chunk_rows for i in infos], np.int64)[loc[:, 0]]
        same = (loc[1:, 0] == loc[:-1, 0]) & (chunk[1:] == chunk[:-1])
        breaks = np.r_[0, np.cumsum(~same)]
        return breaks[units[:, 1] - 1] == breaks[units[:, 0]]

    def _unit_chunks(self, k: int) -> tuple[list[tuple[int, int]], np.ndarray]:
        """Key k: per unit the (array, chunk) of its first row, and per row its row in its chunk."""
        got = self._chunk_ids.get(k)
        if got is None:
            loc, infos = self._locs[k], self._infos[k]
            chunk_rows = np.array([i.chunk_rows for i in infos], np.int64)[loc[:, 0]]
            first = self._units[:, 0]
            chunks = list(zip(loc[first, 0].tolist(), (loc[first, 1] // chunk_rows[first]).tolist()))
            got = self._chunk_ids[k] = (chunks, loc[:, 1] % chunk_rows)
        return got

    def _resident_windows(self) -> list:
        """This process's resident windows, one slot per key (see :class:`_Windows`)."""
        pid = os.getpid()
        if self._resident is None or self._resident[0] != pid:  # new, or a forked worker's copy
            self._resident = (pid, [None] * len(self.keys))
        return self._resident[1]

    # -- public ----------------------------------------------------------------------------
    def release(self) -> None:
        """Let go of the chunk files this process keeps mapped between epochs (they are also
        released when the dataset is garbage-collected). Iterations still running keep theirs
        until they end; the next iteration maps again."""
        self._resident = None

    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch whose order the next iteration yields (call before each epoch)."""
        self.epoch = int(epoch)

    def __repr__(self) -> str:
        mode = "in-memory" if self.in_memory else "streaming"
        return (f"KeyedDataset({len(self.keys)} keys, {self.num_rows} rows, {mode}, "
                f"batch_size={self.batch_size}, snapshot={self.snapshot_id})")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_memory"] = None  # each worker loads its own copy, never pickles one
        state["_resident"] = None  # mappings belong to a process
        state["_chunk_ids"] = {}
        return state

    def __iter__(self) -> Iterator[tuple]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        stream, streams = self.rank * nw + wid, self.world_size * nw
        if self.in_memory:
            return self._iter_memory(stream, streams)
        return self._iter_stream(stream, streams)

    # -- in memory -------------------------------------------------------------------------
    def _load_all(self) -> list[np.ndarray]:
        if self._memory is None:
            cols = []
            for k in range(len(self.keys)):
                cols.append(self._gather(k, np.arange(self.num_rows), _ChunkCache(self._backend, 4)))
            self._memory = cols
        return self._memory

    def _iter_memory(self, stream: int, streams: int) -> Iterator[tuple]:
        cols = self._load_all()
        n = self.num_rows
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        starts = range(0, n, self.batch_size)
        for b, s in enumerate(starts):
            if b % streams != stream:
                continue
            sel = perm[s : s + self.batch_size]
            if self.drop_last and len(sel) < self.batch_size:
                continue
            yield self._emit(sel, [c[sel] for c in cols])

    # -- streaming -------------------------------------------------------------------------
    def _iter_stream(self, stream: int, streams: int) -> Iterator[tuple]:
        n_units = len(self._units)
        ids = np.random.default_rng([self.seed, self.epoch]).permutation(n_units) if self.shuffle else np.arange(n_units)
        mine = ids[stream::streams]
        if not len(mine):
            return
        rng = np.random.default_rng([self.seed, self.epoch, stream, streams])
        # Rounds: consecutive units holding >= buffer_rows rows, shuffled together.
        rounds, acc, first = [], 0, 0
        sizes = self._units[mine, 1] - self._units[mine, 0]
        for j, m in enumerate(sizes.tolist()):
            acc += int(m)
            if acc >= self.buffer_rows:
                rounds.append(mine[first : j + 1])
                first, acc = j + 1, 0
        if first < len(mine):
            rounds.append(mine[first:])
        caches = [_ChunkCache(self._backend, self.cache_chunks) for _ in self.keys]
        # With prefetch the next round is mapped while this one is read: two windows per key.
        copies = 2 if self.prefetch else 1
        windows = _Windows(self, slots=max(len(r) for r in rounds), copies=copies)
        nkeys = len(self.keys)

        def load(r: int, rnd: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
            """The round's sample positions, and per key a source array and the row in it of
            each of the round's rows (see :meth:`_Windows.load`)."""
            starts, stops = self._units[rnd, 0], self._units[rnd, 1]
            sizes = stops - starts
            pos = np.repeat(starts - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())
            srcs, rows = [], []
            for k in range(nkeys):
                src, row = windows.load(k, r % copies, rnd, pos, sizes, caches[k])
                srcs.append(src)
                rows.append(row)
            return pos, srcs, rows

        pool = ThreadPoolExecutor(1, thread_name_prefix="l2s-loader") if self.prefetch else None
        bsz = self.batch_size
        shapes = [(d, infos[0].stored_dtype) for d, infos in zip(self.dims, self._infos)]
        buffers = _BatchBuffers(bsz, shapes)
        carry_pos = np.zeros(0, np.int64)
        carry = [np.zeros((0, d), dt) for d, dt in shapes]
        try:
            pending = pool.submit(load, 0, rounds[0]) if pool else None
            for r, rnd in enumerate(rounds):
                pos_r, srcs, rows = pending.result() if pool else load(r, rnd)
                if pool and r + 1 < len(rounds):
                    pending = pool.submit(load, r + 1, rounds[r + 1])
                # The rows carried from the last round come first, then this round's; ``perm``
                # deals them out. Row i of the output is source row src_rows[k][i] of key k, or
                # carried row perm[i] (a few; patched after the take).
                nc = len(carry_pos)
                held = nc + len(pos_r)
                perm = rng.permutation(held) if self.shuffle else np.arange(held)
                pos = np.concatenate([carry_pos, pos_r])[perm]
                from_carry = perm < nc
                src_rows = [np.where(from_carry, row[0], row[np.maximum(perm - nc, 0)]) for row in rows]
                carried = {i: perm[i] for i in np.flatnonzero(from_carry).tolist()}  # output row -> carried row
                patch = {i // bsz for i in carried}  # batches holding carried rows
                last = r == len(rounds) - 1
                out_n = held if last else held - held % bsz
                for b, s in enumerate(range(0, out_n, bsz)):
                    e = min(s + bsz, out_n)
                    if e - s < bsz and self.drop_last:
                        continue
                    cols = buffers.get(e - s)
                    for k in range(nkeys):
                        # mode="clip": no bounds pass through a temporary (rows valid by construction)
                        srcs[k].take(src_rows[k][s:e], 0, cols[k], "clip")
                    if b in patch:
                        _patch(cols, carry, carried, s, e)
                    yield self._emit(pos[s:e], cols)
                    del cols  # the caller's tensors alone keep the buffer from reuse
                # Fewer than a batch left: copied out (the sources are remapped next round) and
                # shuffled again with the next round's rows.
                left = [src.take(row[out_n:held], 0) for src, row in zip(srcs, src_rows)]
                _patch(left, carry, carried, out_n, held)
                carry_pos, carry = pos[out_n:].copy(), left
                del srcs
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)
            windows.close()

    def _emit(self, positions: np.ndarray, cols: list[np.ndarray]) -> tuple:
        out = [self._tensor(k, c) for k, c in enumerate(cols)]
        if self.with_ids:
            out.append([self.sample_ids[i] for i in positions])
        return tuple(out)

    def _tensor(self, k: int, a: np.ndarray) -> torch.Tensor:
        logical = self._infos[k][0].logical_dtype
        if logical == "bfloat16":
            t = torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(np.ascontiguousarray(a))
        return t.float() if self.dtype == "float32" and t.dtype != torch.float32 else t

    def _source(self, k: int, u: int, cache: _ChunkCache) -> np.ndarray:
        """Key k's rows of unit u ``[len, D_k]``: a mapped chunk when they are one whole chunk in
        storage order (the usual unit), else a gathered copy."""
        start, stop = self._units[u].tolist()
        if self._whole[k][u]:
            a0, r0 = self._locs[k][start].tolist()
            info = self._infos[k][a0]
            return map_chunk(self._backend, info, r0 // info.chunk_rows, verify=self.verify)
        return self._gather(k, np.arange(start, stop), cache)

    def _gather(self, k: int, positions: np.ndarray, cache: _ChunkCache) -> np.ndarray:
        """Stored-dtype rows ``[len(positions), D_k]`` of key k, read chunk by chunk via ``cache``."""
        infos = self._infos[k]
        loc = self._locs[k][positions]
        out = np.empty((len(positions), infos[0].dim), infos[0].stored_dtype)
        chunk_rows = np.array([infos[a].chunk_rows for a in loc[:, 0]], np.int64)
        chunk = loc[:, 1] // chunk_rows
        order = np.lexsort((chunk, loc[:, 0]))
        a_s, c_s = loc[order, 0], chunk[order]
        bounds = np.flatnonzero(np.r_[True, (a_s[1:] != a_s[:-1]) | (c_s[1:] != c_s[:-1]), True])
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            info = infos[int(a_s[lo])]
            block = cache.get(info, int(c_s[lo]))
            dst = order[lo:hi]
            out[dst] = block[loc[dst, 1] - c_s[lo] * info.chunk_rows]
        return out


class _Windows:
    """Where each round's rows come from, per key: chunk files mapped into a
    :class:`_vmap.Window`, so the round's rows are one array and a batch is one ``take``.

    Used for a key's round when the store is on a local disk, the platform can map files at
    fixed addresses, and each of the round's units has its rows of that key in one chunk (how
    extraction writes: the keys of a shard share its rows and chunking; a ``where`` that picks
    some rows of a chunk maps the chunk and takes those rows). Otherwise, or if mapping fails,
    the round's rows are copied into one array instead (a pass through memory: slower, same
    rows, same order).

    Two ways to map. *Resident* (``verify="once"``, and few enough chunks): every unit has its
    own slot in a window kept on the dataset for the life of the process, so a chunk is mapped
    once and later epochs only ``stat`` it (once per pass) to see that it did not change; a
    changed file is mapped and checked again. Mapping and unmapping 2 MiB per chunk per epoch
    was about a fifth of an epoch. *Per round* (``verify="always"``, or more chunks than
    :attr:`MAX_RESIDENT` mappings): a window of one slot per unit of a round, remapped each
    round (two with ``prefetch``, so the next round maps while this one is read).
    """

    MAX_RESIDENT = 24576  # mappings kept per process (the kernel's default cap is 65,530)

    def __init__(self, ds: KeyedDataset, slots: int, copies: int):
        self.ds, self.slots = ds, slots
        self._windows: dict[tuple[int, int], _vmap.Window] = {}
        self._slot_rows: list[int | None] = []
        local = ds._backend.is_local and _vmap.available()
        for infos in ds._infos:
            uniform = len({(i.dim, i.stored_dtype) for i in infos}) == 1
            fit = _vmap.slot_rows(max(i.chunk_rows for i in infos), infos[0].dim * infos[0].stored_dtype.itemsize)
            self._slot_rows.append(fit if local and uniform else None)
        n_units = len(ds._units)
        self._resident = ds._resident_windows() if (
            ds.verify == "once" and n_units * len(ds.keys) <= self.MAX_RESIDENT) else None
        self._pass = object()  # this iteration: a resident chunk is stat'ed once per pass

    def load(self, k: int, copy: int, rnd: np.ndarray, pos: np.ndarray, sizes: np.ndarray,
             cache: _ChunkCache) -> tuple[np.ndarray, np.ndarray]:
        """Key k's rows of the round's units (sample positions ``pos``, ``sizes`` per unit):
        (source ``[R, D_k]``, the row in it of each of ``pos``)."""
        ds = self.ds
        if self._slot_rows[k] is not None and ds._one_chunk[k][rnd].all():
            try:
                if self._resident is not None:
                    return self._map_resident(k, rnd, pos, sizes)
                return self._map(k, copy, rnd, pos, sizes)
            except OSError:  # e.g. out of mappings: copy from here on
                self._slot_rows[k] = None
        srcs = [ds._source(k, int(u), cache) for u in rnd.tolist()]
        return np.concatenate(srcs), np.arange(sum(len(x) for x in srcs))

    def _map(self, k: int, copy: int, rnd: np.ndarray, pos: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ds, sr = self.ds, self._slot_rows[k]
        w = self._windows.get((k, copy))
        if w is None:
            info = ds._infos[k][0]
            w = self._windows[(k, copy)] = _vmap.Window(self.slots, sr, info.dim, info.stored_dtype)
        infos, (chunks, in_chunk) = ds._infos[k], ds._unit_chunks(k)
        for j, u in enumerate(rnd.tolist()):
            a, c = chunks[u]
            place_chunk(ds._backend, infos[a], c, w, j, verify=ds.verify)
        return w.view(), np.repeat(np.arange(len(rnd)) * sr, sizes) + in_chunk[pos]

    def _map_resident(self, k: int, rnd: np.ndarray, pos: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ds, sr = self.ds, self._slot_rows[k]
        res = self._resident[k]
        if res is None:
            info = ds._infos[k][0]
            res = self._resident[k] = _Resident(_vmap.Window(len(ds._units), sr, info.dim, info.stored_dtype))
        infos, (chunks, in_chunk), backend = ds._infos[k], ds._unit_chunks(k), ds._backend
        for u in rnd.tolist():
            if res.seen.get(u) is self._pass:
                continue
            a, c = chunks[u]
            ident = res.idents.get(u)
            if ident is None or chunk_identity(backend, infos[a], c) != ident:
                res.idents[u] = place_chunk(backend, infos[a], c, res.window, u, verify=ds.verify)
            res.seen[u] = self._pass
        return res.window.view(), np.repeat(rnd * sr, sizes) + in_chunk[pos]

    def close(self) -> None:
        """Unmap the per-round windows (resident ones stay with the dataset)."""
        for w in self._windows.values():
            w.close()
        self._windows.clear()


class _Resident:
    """One key's resident window: unit u's chunk at slot u, and the identity of each mapped file
    (and the pass that last confirmed it unchanged)."""

    def __init__(self, window: _vmap.Window):
        self.window = window
        self.idents: dict[int, tuple] = {}
        self.seen: dict[int, object] = {}


def _patch(out: list[np.ndarray], carry: list[np.ndarray], carried: dict[int, int], s: int, e: int) -> None:
    """Overwrite the rows of ``out`` (rows s..e of the round) that come from the carried rows."""
    for i in range(s, e):
        c = carried.get(i)
        if c is not None:
            for o, src in zip(out, carry):
                o[i - s] = src[c]


class _BatchBuffers:
    """Reused batch arrays: one ``[batch_size, D_k]`` array per key, a few sets in turn.

    A set goes back into use once nothing references its arrays: every batch is the arrays
    themselves or views of them (numpy, or the torch tensor made from them), and a view holds
    its base, so the reference counts tell whether a batch is still alive. Batches the caller
    keeps stay valid; their set is simply not reused. Reuse keeps the pages resident and the
    batch in cache: a fresh allocation of this size is often a new mapping that the kernel
    zero-fills page by page.
    """

    KEEP = 3  # the batch being yielded, the one a caller may still hold, one spare
    _FREE_REFS = 3  # the set's list, the loop variable, getrefcount's argument

    def __init__(self, batch_size: int, shapes: Sequence[tuple[int, np.dtype]]) -> None:
        self.batch_size, self.shapes = batch_size, list(shapes)
        self._pool: list[list[np.ndarray]] = []

    def get(self, rows: int) -> list[np.ndarray]:
        """Uninitialised ``[rows, D_k]`` arrays (rows <= batch_size), one per key."""
        for cols in self._pool:
            for c in cols:
                if sys.getrefcount(c) > self._FREE_REFS:
                    break
            else:
                break  # no array of this set is referenced outside the pool
        else:
            cols = [np.empty((self.batch_size, d), dt) for d, dt in self.shapes]
            if len(self._pool) < self.KEEP:
                self._pool.append(cols)
        return cols if rows == self.batch_size else [c[:rows] for c in cols]


class _ChunkCache:
    """The last few chunks read, so keys stored in another order are not read once per row."""

    def __init__(self, backend: Backend, capacity: int):
        self.backend = backend
        self.capacity = max(1, capacity)
        self._items: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def get(self, info: ArrayInfo, i: int) -> np.ndarray:
        k = (info.path, i)
        hit = self._items.get(k)
        if hit is not None:
            self._items.move_to_end(k)
            return hit
        block = read_chunk(self.backend, info, i)
        self._items[k] = block
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return block


def _select(store: Store, snap, where: str) -> set[str]:
    """Sample ids that ``where`` selects over samples joined with memberships (sandboxed)."""
    with store.catalog(snapshot=snap) as cat:
        return set(cat.select_sample_ids(where))
