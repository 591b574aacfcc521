"""The round iteration: a layout's units read round by round, and dealt out as batches.

A stream (one rank's DataLoader worker) takes its share of the epoch's shuffled units,
``buffer_rows`` rows at a time (a round: the shuffle buffer). It reads their chunks with plain
reads into a reused round buffer (one ``preadv`` per chunk, its crc32c checked over the bytes
read and against the crc the manifest rows give), and hands out batches, each one ``take`` of
randomly chosen rows of the round into a reused batch array. Fewer than a batch of rows left
at the end of a round carry over into the next. With ``prefetch`` a thread reads round r+1
while round r's batches go out (the reads and their checks let go of the GIL).

In memory (:class:`Resident`), the rounds of the first epoch read their units into one array
per key instead of a round buffer, and later epochs read nothing. Both paths yield the same
batches.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from l2s_data.store._backend import Backend
from l2s_data.store._chunks import ChunkCache, ChunkReader, gather
from l2s_data.store.layout import Layout

__all__ = ["Order", "Resident", "rounds_of", "batches"]


@dataclass(frozen=True)
class Order:
    """What fixes the batches of one epoch of one stream, besides the layout."""

    seed: int
    epoch: int
    stream: int
    streams: int
    shuffle: bool
    batch_size: int
    drop_last: bool
    buffer_rows: int


class Resident:
    """A process's in-memory copy of a selection: per key ``[n, D_k]`` in position order, and
    which units have been read into it."""

    def __init__(self, layout: Layout):
        self.cols = [np.empty((layout.num_rows, d), dt) for d, dt in layout.shapes]
        self.loaded = np.zeros(len(layout.units), bool)


def rounds_of(layout: Layout, order: Order) -> list[np.ndarray]:
    """This stream's units, dealt from the epoch's unit order, cut into rounds: consecutive
    units holding >= buffer_rows rows, whose rows are shuffled together."""
    n_units = len(layout.units)
    ids = np.random.default_rng([order.seed, order.epoch]).permutation(n_units) if order.shuffle \
        else np.arange(n_units)
    mine = ids[order.stream::order.streams]
    out, acc, first = [], 0, 0
    for j, m in enumerate(layout.unit_rows(mine).tolist()):
        acc += int(m)
        if acc >= order.buffer_rows:
            out.append(mine[first : j + 1])
            first, acc = j + 1, 0
    if first < len(mine):
        out.append(mine[first:])
    return out


def batches(layout: Layout, backend: Backend, order: Order, *, memory: Resident | None, prefetch: bool,
            cache_chunks: int) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """(sample positions ``[B]``, per key rows ``[B, D_k]`` stored dtype) of each batch. The
    arrays are reused once nothing references them: a caller keeps a batch by keeping them."""
    rounds = rounds_of(layout, order)
    if not rounds:
        return
    rng = np.random.default_rng([order.seed, order.epoch, order.stream, order.streams])
    bsz = order.batch_size
    if memory is not None:
        source: _Source = _MemorySource(layout, backend, memory, cache_chunks)
    else:
        most = max(int(layout.unit_rows(r).sum()) for r in rounds)
        source = _RoundSource(layout, backend, bsz, bsz + most, 2 if prefetch else 1, cache_chunks)
    pool = ThreadPoolExecutor(1, thread_name_prefix="l2s-loader") if prefetch else None
    buffers = _BatchBuffers(bsz, layout.shapes)
    carry_pos = np.zeros(0, np.int64)
    try:
        pending = pool.submit(source.load, 0, rounds[0]) if pool else None
        for r, rnd in enumerate(rounds):
            pos_r, srcs = pending.result() if pool else source.load(r, rnd)
            if pool and r + 1 < len(rounds):
                pending = pool.submit(source.load, r + 1, rounds[r + 1])
            # The rows carried from the last round come first, then this round's; ``perm``
            # deals them out: output row i is held row perm[i].
            nc = len(carry_pos)
            held = nc + len(pos_r)
            perm = rng.permutation(held) if order.shuffle else np.arange(held)
            pos = np.concatenate([carry_pos, pos_r])[perm]
            rows = source.rows(srcs, pos, perm, nc)
            out_n = held if r == len(rounds) - 1 else held - held % bsz
            for s in range(0, out_n, bsz):
                e = min(s + bsz, out_n)
                if e - s < bsz and order.drop_last:
                    continue
                cols = buffers.get(e - s)
                for k, src in enumerate(srcs):
                    # mode="clip": no bounds pass through a temporary (rows valid by construction)
                    src.take(rows[s:e], 0, cols[k], "clip")
                yield pos[s:e], cols
                del cols  # the caller's arrays alone keep the buffer from reuse
            # Fewer than a batch left: shuffled again with the next round's rows.
            source.carry(srcs, rows[out_n:held])
            carry_pos = pos[out_n:held].copy()
            del srcs
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)


def read_unit(layout: Layout, k: int, u: int, dest: np.ndarray, at: int, reader: ChunkReader,
              cache: ChunkCache) -> None:
    """Write key k's rows of unit u into ``dest[at : at + rows of u]``, checked."""
    start, stop = layout.units[u].tolist()
    out = dest[at : at + stop - start]
    infos, expect = layout.infos[k], layout.expect[k]
    if layout.whole[k][u]:
        a, c = layout.first_chunk[k][u]
        reader.into(infos[a], c, out, int(expect[a][c]))
    elif layout.one_chunk[k][u]:
        a, c = layout.first_chunk[k][u]
        block = reader.scratch(infos[a], c, int(expect[a][c]))
        block.take(layout.in_chunk[k][start:stop], 0, out, "clip")
    else:
        gather(cache, infos, expect, layout.locs[k][start:stop], out)


class _Source:
    """Where a round's rows are read to, and where its batches take them from."""

    def __init__(self, layout: Layout, backend: Backend, cache_chunks: int):
        self.layout = layout
        self.reader = ChunkReader(backend)
        self.caches = [ChunkCache(self.reader, cache_chunks) for _ in layout.infos]

    def load(self, r: int, rnd: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Read round r (units ``rnd``): the sample positions of its rows, in unit order, and
        per key the array that batches take from."""
        raise NotImplementedError

    def rows(self, srcs: list[np.ndarray], pos: np.ndarray, perm: np.ndarray, nc: int) -> np.ndarray:
        """The row in each source array of each output row of the round."""
        raise NotImplementedError

    def carry(self, srcs: list[np.ndarray], rows: np.ndarray) -> None:
        """Keep ``rows`` (fewer than a batch) for the next round."""


class _RoundSource(_Source):
    """Streaming: per key a round buffer ``[batch_size + round rows, D_k]``, reused round after
    round (two with prefetch). Rows ``[batch_size - nc, batch_size)`` hold the nc rows carried
    from the last round, then the units' rows follow in order."""

    def __init__(self, layout: Layout, backend: Backend, batch_size: int, capacity: int, copies: int,
                 cache_chunks: int):
        super().__init__(layout, backend, cache_chunks)
        self.batch_size = batch_size
        self.bufs = [[np.empty((capacity, d), dt) for d, dt in layout.shapes] for _ in range(copies)]
        self._carried: list[np.ndarray] = [np.empty((0, d), dt) for d, dt in layout.shapes]

    def load(self, r: int, rnd: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        bufs = self.bufs[r % len(self.bufs)]
        at = self.batch_size
        for u in rnd.tolist():
            for k, buf in enumerate(bufs):
                read_unit(self.layout, k, u, buf, at, self.reader, self.caches[k])
            at += int(self.layout.units[u, 1] - self.layout.units[u, 0])
        return self.layout.positions(rnd), bufs

    def rows(self, srcs, pos, perm, nc):
        for src, kept in zip(srcs, self._carried):
            src[self.batch_size - nc : self.batch_size] = kept
        return perm + (self.batch_size - nc)

    def carry(self, srcs, rows):
        self._carried = [src.take(rows, 0) for src in srcs]  # copied out: the buffer is refilled


class _MemorySource(_Source):
    """In memory: a round reads only the units not read yet (all of them in the first epoch,
    none later), straight into the resident arrays; batches take rows by sample position."""

    def __init__(self, layout: Layout, backend: Backend, memory: Resident, cache_chunks: int):
        super().__init__(layout, backend, cache_chunks)
        self.memory = memory

    def load(self, r: int, rnd: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        mem = self.memory
        for u in rnd.tolist():
            if not mem.loaded[u]:
                at = int(self.layout.units[u, 0])
                for k, col in enumerate(mem.cols):
                    read_unit(self.layout, k, u, col, at, self.reader, self.caches[k])
                mem.loaded[u] = True
        return self.layout.positions(rnd), mem.cols

    def rows(self, srcs, pos, perm, nc):
        return pos


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
