"""Reusing locked SQL catalogs while nothing they reflect has changed.

Building a :class:`~l2s_data.store.catalog.Catalog` costs tens of milliseconds, most of it
``duckdb.connect`` (a new database instance), and ``Store.sql`` builds one per statement. This
process therefore keeps a few idle, locked catalogs and hands one to a caller whose catalog
would be built exactly the same. A catalog is found again only by its :class:`CatalogKey`,
computed afresh for every catalog asked for (``catalog.key_of``):

- the store: its URL and filesystem;
- each table's committed parts, by name, size, modification time and (on a local disk) inode:
  parts are write-once, but a recipe part removed by a delete and registered again keeps its
  name;
- the snapshot's live manifest files, by name and sha256, and its excluded attempts;
- the database-wide limits set at build: the memory limit in bytes (and the spill size, though
  a catalog that may spill is never reused: its spill folder goes when it closes).

Any commit (a new manifest, a new part of any table, a compaction, a tombstone, a removed part)
changes the key, so the next catalog is built afresh over what is committed then; nothing is
updated in place, and a reused catalog is locked exactly as a fresh one is. The statement time
limit is per statement, not part of the key.

An idle catalog is taken out of the pool by one caller, so a busy one is never shared: a
concurrent caller with the same key finds none and builds its own. It goes back when its
caller closes it, unless its statement was interrupted (time limit, Ctrl-C), failed with an
error that may leave the connection unusable, followed a compaction, left a stream open, or
had its raw connection handed out (``Catalog.con``): those are closed instead.

Memory: at most :data:`MAX_IDLE` idle catalogs per process, least recently used closed first.
An idle catalog holds an in-memory DuckDB with views and lazily scanned datasets, no rows, and
DuckDB's worker thread: about 5 MB of RSS each on a small store (measured: four idle, +18.5 MB).

Fork: idle catalogs are closed just before this process forks (a DuckDB database cannot be
destroyed in a forked child), so a child (multiprocessing, a loader's workers) starts with an
empty pool and never touches its parent's connections. :func:`clear` closes every idle one.
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["CatalogKey", "PoolStats", "MAX_IDLE", "take", "give", "discard", "clear", "stats", "keep"]

#: Idle catalogs kept per process.
MAX_IDLE = 4


@dataclass(frozen=True)
class CatalogKey:
    """Everything a catalog exposes: two catalogs with equal keys are built the same."""

    store: tuple[str, Any]
    parts: tuple[tuple[str, tuple[tuple[str, tuple[Any, ...]], ...]], ...]
    manifests: tuple[tuple[str, str], ...]
    excluded: tuple[str, ...]
    memory_bytes: int
    spill_bytes: int | None

    def files(self, table: str) -> list[str]:
        """The committed parts of ``table`` this key names (what the catalog registers)."""
        return [f for name, stamped in self.parts if name == table for f, _ in stamped]


class _Closable(Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True)
class PoolStats:
    """Catalogs this process built, reused and closed instead of reusing; how many are idle."""

    built: int
    reused: int
    discarded: int
    idle: int


class _Pool:
    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.idle: list[tuple[CatalogKey, _Closable]] = []  # least recently used first
        self.built = self.reused = self.discarded = 0

    def take(self, key: CatalogKey) -> Any | None:
        with self.lock:
            self._check_pid()
            for i in range(len(self.idle) - 1, -1, -1):
                if self.idle[i][0] == key:
                    self.reused += 1
                    return self.idle.pop(i)[1]
            self.built += 1
            return None

    def give(self, key: CatalogKey, item: _Closable) -> None:
        with self.lock:
            self._check_pid()
            self.idle.append((key, item))
            evicted = self.idle[:-MAX_IDLE] if len(self.idle) > MAX_IDLE else []
            del self.idle[:len(evicted)]
        for _, old in evicted:
            old.close()

    def discard(self) -> None:
        with self.lock:
            self.discarded += 1

    def clear(self) -> int:
        with self.lock:
            self._check_pid()
            idle, self.idle = self.idle, []
        for _, item in idle:
            item.close()
        return len(idle)

    def _check_pid(self) -> None:
        if self.pid != os.getpid():  # a child forked without the hooks (the parent's are kept)
            _INHERITED.extend(self.idle)
            self.pid, self.idle = os.getpid(), []

    # A DuckDB database runs worker threads, which a forked child does not have: destroying a
    # copy of one there joins threads that do not exist, and hangs. So no idle catalog crosses
    # a fork: they are closed just before it, under the lock, which the child then replaces.
    def before_fork(self) -> None:
        self.lock.acquire()
        idle, self.idle = self.idle, []
        for _, item in idle:
            item.close()

    def after_fork_in_parent(self) -> None:
        self.lock.release()


#: Catalogs of a parent process, kept alive in this forked child and never closed (see above).
_INHERITED: list[Any] = []
_POOL = _Pool()
os.register_at_fork(before=_POOL.before_fork, after_in_parent=_POOL.after_fork_in_parent,
                    after_in_child=_POOL._reset)
atexit.register(lambda: _POOL.clear())  # idle catalogs' spill folders go with the process


def take(key: CatalogKey) -> Any | None:
    """An idle catalog built for ``key``, now the caller's alone; None: build one (counted)."""
    return _POOL.take(key)


def give(key: CatalogKey, item: _Closable) -> None:
    """Keep ``item`` (closed and idle) for the next caller with ``key``."""
    _POOL.give(key, item)


def discard() -> None:
    """Count a catalog closed instead of kept."""
    _POOL.discard()


def keep(item: Any) -> None:
    """Keep ``item``, built by a parent of this forked process, alive and unclosed for good."""
    _INHERITED.append(item)


def clear() -> int:
    """Close every idle catalog of this process; returns how many."""
    return _POOL.clear()


def stats() -> PoolStats:
    """What this process's pool did so far, and how many catalogs are idle now."""
    with _POOL.lock:
        return PoolStats(_POOL.built, _POOL.reused, _POOL.discarded, len(_POOL.idle))
