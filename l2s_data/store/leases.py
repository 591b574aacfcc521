"""The store's maintenance lease: one compact, delete or gc at a time, alongside any writers.

A lease is a numbered file ``leases/<name>-<n>.json`` made with the same create-if-absent
primitive that commits shards, so exactly one process wins lease ``n`` on a local disk and on an
object store alike. Lease ``n + 1`` can be taken only once lease ``n`` is released (a
``<name>-<n>.released`` marker beside it) or has expired, so a holder that died blocks others for
at most its ``ttl_s``. Writers never take it: the operations it orders are made safe for
concurrent writers by their own protocol (tombstones, claims), and the lease keeps two of them
from interleaving.

::

    with Lease(backend, op="compact"):
        ...   # LeaseHeldError names the holder and when its lease expires
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket

from l2s_data.errors import LeaseHeldError
from l2s_data.store._backend import Backend
from l2s_data.store.contract import now

__all__ = ["Lease", "DEFAULT_TTL_S", "idle_stamp"]

DEFAULT_TTL_S = 3600.0
_KEEP = 4  # released leases kept for the record


class Lease:
    def __init__(self, backend: Backend, *, op: str, name: str = "maintenance", ttl_s: float = DEFAULT_TTL_S):
        self.backend = backend
        self.name = name
        self.op = op
        self.ttl_s = float(ttl_s)
        self.number: int | None = None
        self._pattern = re.compile(rf"^{re.escape(name)}-(\d{{8}})\.(json|released)$")

    def _file(self, n: int, suffix: str = "json") -> str:
        return f"leases/{self.name}-{n:08d}.{suffix}"

    def _numbers(self) -> tuple[list[int], set[int]]:
        taken, released = [], set()
        for entry in self.backend.listdir("leases"):
            m = self._pattern.match(entry)
            if m:
                (taken.append if m.group(2) == "json" else released.add)(int(m.group(1)))
        return sorted(taken), released

    def acquire(self) -> Lease:
        taken, released = self._numbers()
        last = taken[-1] if taken else 0
        if last and last not in released:
            try:
                holder = json.loads(self.backend.read_bytes(self._file(last)))
                expires = _dt.datetime.fromisoformat(holder["expires_at"])
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                holder, expires = {}, now()  # unreadable: treat as expired rather than block forever
            if expires > now():
                raise LeaseHeldError(
                    f"store {self.backend.url} is busy: {holder.get('op', '?')} by pid "
                    f"{holder.get('pid', '?')} on {holder.get('host', '?')} holds the maintenance "
                    f"lease until {expires.isoformat(timespec='seconds')}. Retry when it finishes; a "
                    f"holder that died releases it at that time."
                )
        record = {
            "op": self.op, "host": socket.gethostname(), "pid": os.getpid(),
            "taken_at": now().isoformat(),
            "expires_at": (now() + _dt.timedelta(seconds=self.ttl_s)).isoformat(),
        }
        if not self.backend.put_if_absent(self._file(last + 1), json.dumps(record).encode()):
            raise LeaseHeldError(
                f"store {self.backend.url} is busy: another maintenance operation took the lease "
                f"just now. Retry when it finishes."
            )
        self.number = last + 1
        return self

    def release(self) -> None:
        if self.number is None:
            return
        self.backend.put_if_absent(self._file(self.number, "released"), b"")
        for n in range(max(1, self.number - 64), self.number - _KEEP):
            self.backend.remove(self._file(n))
            self.backend.remove(self._file(n, "released"))
        self.number = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def idle_stamp(backend: Backend, name: str = "maintenance") -> tuple[str, ...] | None:
    """The names in ``leases/`` while no ``name`` lease is held (its latest one released), or
    None while one is held (or may be: taken, not released). Lease numbers only grow, so the
    same stamp read twice means no maintenance operation took the lease in between: no
    compaction or tombstone was created, and no manifest removed (only a lease holder does)."""
    entries = tuple(sorted(backend.listdir("leases")))
    pattern = re.compile(rf"^{re.escape(name)}-(\d{{8}})\.(json|released)$")
    taken, released = set(), set()
    for entry in entries:
        m = pattern.match(entry)
        if m:
            (taken if m.group(2) == "json" else released).add(int(m.group(1)))
    if taken and max(taken) not in released:
        return None
    return entries
