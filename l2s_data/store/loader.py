"""Streaming keyed columns out of a store: a DataLoader-ready torch IterableDataset.

::

    ds = store.columns((Key("input-llava", "input", "prompt_last", 14),
                        Key("safety-llava", "p2s", "completion_last", 14)),
                       where="dataset = 'mmsb' AND split = 'train'", batch_size=64, seed=0)
    for epoch in range(100):
        ds.set_epoch(epoch)
        for x, y in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2):
            ...   # x [B, Dx], y [B, Dy] float32

Reads are chunk-granular: zarr gathers random single rows about 300x slower than a plain
read, whole chunks at page-cache speed. So the unit of work is one chunk of the first key's
array (all selected samples in it): ``layout.plan`` fixes where every row lives, and
``rounds`` deals the shuffled units out to ranks and DataLoader workers, reads them round by
round (the shuffle buffer) and cuts batches. Nothing is memory-mapped: a chunk file truncated
or rewritten while a loader runs raises :class:`~l2s_data.errors.CorruptChunkError` naming the
chunk, and every chunk is checked against its crc32c and against the crc its rows must have by
the manifest's per-row checksums.

Every epoch yields every selected row exactly once over all workers and ranks, in an order
that depends only on (seed, epoch, world size, worker count). A selection whose bytes fit
``memory_budget`` is kept in memory (``in_memory=None`` picks automatically; ``False`` forces
streaming): the first epoch reads it into one array per key, later epochs read nothing. Both
paths yield the same batches.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from multiprocessing.context import get_spawning_popen
from typing import Any, Protocol

import numpy as np
import torch

from l2s_data.errors import KeyNotFoundError
from l2s_data.store.layout import plan
from l2s_data.store.rounds import Order, Resident, batches
from l2s_data.store.snapshot import Key

__all__ = ["KeyedDataset"]


class Store(Protocol):
    """What the loader uses of the store facade that builds it (``Store.columns``)."""

    url: str

    def snapshot(self) -> Any: ...

    def catalog(self, *, snapshot: Any = None) -> Any: ...


class KeyedDataset(torch.utils.data.IterableDataset):
    """Batches ``(col_0 [B, D_0], ..., col_k [B, D_k])`` (+ sample ids if ``with_ids``).

    Use with ``DataLoader(ds, batch_size=None, num_workers=...)``: the dataset batches itself.

    Args:
        keys: the columns to yield, in order.
        where: a SQL boolean expression over the columns of ``samples`` and ``memberships``
            (``split = 'train' AND category LIKE '0%'``); None = every sample having all keys.
            One that selects no sample raises :class:`EmptySelectionError` here.
        batch_size: rows per batch (the last batch of an epoch may be smaller).
        shuffle: shuffle chunk order and rows inside the buffer; False = storage order.
        seed: with the epoch (``set_epoch``), fixes the order.
        drop_last: drop each worker's final partial batch.
        buffer_rows: rows of the shuffle buffer (default: 8 chunks, at least 4 batches).
        in_memory: True / False / None (= when the selection fits ``memory_budget`` bytes).
        dtype: "float32" (default) or "stored" (float16 / bfloat16 tensors as stored).
        missing: "error" if a selected sample lacks a key, or "skip" it.
        prefetch: read the next round's chunks in a background thread while batches go out
            (the reads and their crc checks let go of the GIL). None (default) = when this
            process may run on two cores or more.
        rank, world_size: split units across data-parallel ranks as well.
    """

    def __init__(self, store: Store, keys: Sequence[Key], *, where: str | None = None,
                 batch_size: int = 64, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 buffer_rows: int | None = None, in_memory: bool | None = None,
                 memory_budget: int = 2 << 30, dtype: str = "float32", with_ids: bool = False,
                 missing: str = "error", rank: int = 0, world_size: int = 1, epoch: int = 0,
                 cache_chunks: int = 64, prefetch: bool | None = None):
        super().__init__()
        keys = tuple(keys)
        if not keys or not all(isinstance(k, Key) for k in keys):
            raise KeyNotFoundError(f"keys must be a non-empty sequence of Key(...), got {keys!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        if dtype not in ("float32", "stored"):
            raise ValueError(f"dtype must be 'float32' or 'stored', got {dtype!r}.")
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
        self._epoch = _SharedEpoch(int(epoch))
        self.cache_chunks = cache_chunks
        self.prefetch = _spare_core() if prefetch is None else bool(prefetch)
        snap = store.snapshot()
        self.backend = snap.backend
        self.snapshot_id = snap.id

        selected = None if where is None else _select(store, snap, where)
        what = "every key" if where is None else f"where={where!r}"
        self.layout = plan(snap, keys, selected, missing=missing, what=what, url=store.url)
        self.sample_ids = list(self.layout.sample_ids)
        self.skipped = self.layout.skipped
        self.dims = self.layout.dims
        self.num_rows = self.layout.num_rows
        self.nbytes = self.layout.nbytes
        self.in_memory = self.nbytes <= memory_budget if in_memory is None else bool(in_memory)
        self.buffer_rows = int(buffer_rows or max(8 * self.layout.infos[0][0].chunk_rows, 4 * batch_size))
        self._memory: Resident | None = None

    # -- public ----------------------------------------------------------------------------
    def release(self) -> None:
        """Drop this process's in-memory copy of the selection (the next epoch reads again)."""
        self._memory = None

    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch whose order the next iteration yields (call before each epoch); DataLoader
        workers that outlive an epoch (``persistent_workers=True``) see it too."""
        self._epoch.set(int(epoch))

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def __repr__(self) -> str:
        mode = "in-memory" if self.in_memory else "streaming"
        return (f"KeyedDataset({len(self.keys)} keys, {self.num_rows} rows, {mode}, "
                f"batch_size={self.batch_size}, snapshot={self.snapshot_id})")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_memory"] = None  # each worker loads its own copy, never pickles one
        return state

    def __iter__(self) -> Iterator[tuple]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return self._iter(self.rank * nw + wid, self.world_size * nw)

    def order(self, epoch: int, stream: int = 0, streams: int = 1) -> Order:
        """What fixes the batches of ``epoch`` for one of ``streams`` streams (rank x worker)."""
        return Order(seed=self.seed, epoch=epoch, stream=stream, streams=streams, shuffle=self.shuffle,
                     batch_size=self.batch_size, drop_last=self.drop_last, buffer_rows=self.buffer_rows)

    def _iter(self, stream: int, streams: int) -> Iterator[tuple]:
        order = self.order(self.epoch, stream, streams)  # the epoch read once: set_epoch may run meanwhile
        if self.in_memory and self._memory is None:
            self._memory = Resident(self.layout)
        for pos, cols in batches(self.layout, self.backend, order, memory=self._memory if self.in_memory else None,
                                 prefetch=self.prefetch, cache_chunks=self.cache_chunks):
            out = self._emit(pos, cols)
            del cols  # the tensors alone keep the batch arrays from reuse
            yield out

    def _emit(self, positions: np.ndarray, cols: list[np.ndarray]) -> tuple:
        out = [self._tensor(k, c) for k, c in enumerate(cols)]
        if self.with_ids:
            out.append([self.sample_ids[i] for i in positions])
        return tuple(out)

    def _tensor(self, k: int, a: np.ndarray) -> torch.Tensor:
        logical = self.layout.infos[k][0].logical_dtype
        if logical == "bfloat16":
            t = torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(np.ascontiguousarray(a))
        return t.float() if self.dtype == "float32" and t.dtype != torch.float32 else t


class _SharedEpoch:
    """The epoch, in memory shared with DataLoader workers started from this process: a
    persistent worker keeps the dataset it was given, so a plain attribute set later by
    ``set_epoch`` would never reach it, and every epoch would repeat the first one's order.
    Pickled for anything but starting a worker, it is a plain number."""

    def __init__(self, epoch: int):
        self._box = multiprocessing.RawValue("q", epoch)

    def get(self) -> int:
        return int(self._box.value)

    def set(self, epoch: int) -> None:
        self._box.value = epoch

    def __getstate__(self) -> dict[str, Any]:
        return {"box": self._box} if get_spawning_popen() is not None else {"epoch": self.get()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._box = state["box"] if "box" in state else multiprocessing.RawValue("q", state["epoch"])


def _spare_core() -> bool:
    """Whether this process may run on two cores or more (its CPU affinity, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except AttributeError:  # not on Linux
        return (os.cpu_count() or 1) >= 2


def _select(store: Store, snap, where: str) -> set[str]:
    """Sample ids that ``where`` selects over samples joined with memberships (sandboxed)."""
    with store.catalog(snapshot=snap) as cat:
        return set(cat.select_sample_ids(where))
