"""Attempt folders on disk: what the writer makes, recognised and removed without following links.

gc and delete act only through this module. An entry under ``shards/`` is the store's when:

- ``shards/<shard>`` is a real folder (never a link) whose name the writer accepts as a shard;
- ``shards/<shard>/<attempt>`` is a real folder named as an attempt (32 lowercase hex);
- it holds only the writer's files: ``attempt.json`` naming that very shard and attempt,
  ``claim``, the root ``zarr.json``, and arrays ``<view>.<position>.L<layer>/`` holding
  ``zarr.json`` and ``c/<i>/0``; or what a removal that stopped half-way left of such a folder
  (only its ``claim``, or empty folders).

Anything else (a link, a stray file at any level, another name, a special file) is reported as
``"path: why"`` and never touched. A recognised folder is removed file by file and then folder
by folder (only ever an empty one), never by a recursive delete that could follow a link; its
record (``attempt.json``) and then its ``claim`` go last, so a removal cut short leaves a
folder that is still recognised and is finished by the next gc. Ages come from what the store
recorded (``attempt.json``'s ``started_at``, a claim's ``at``): a folder without a record is
never "infinitely old".
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Callable

from l2s_data.errors import StoreError, WriteMismatchError
from l2s_data.store._backend import DIR, LINK, Backend
from l2s_data.store.contract import attempt_dir, check_attempt, check_shard, now

__all__ = ["scan_shards", "list_attempts", "attempt_files", "remove_attempt", "files_bytes", "recorded_age_s"]


def recorded_age_s(backend: Backend, rel: str, key: str) -> float | None:
    """Seconds since the time ``key`` that the store recorded in the JSON file ``rel``; None
    when there is no readable record (never "infinitely old")."""
    try:
        meta = json.loads(backend.read_bytes(rel))
        return (now() - _dt.datetime.fromisoformat(meta[key])).total_seconds()
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError, StoreError):
        return None


def _valid(check: Callable[[object], object], name: str) -> bool:
    try:
        check(name)
    except WriteMismatchError:
        return False
    return True


def scan_shards(backend: Backend) -> tuple[list[tuple[str, str]], list[str]]:
    """The (shard, attempt) folders under ``shards/`` that the writer could have made, and every
    other entry there as ``"path: why"`` (links, stray files, other names). Links are never
    followed: a symbolic link is reported, whatever it points to."""
    attempts: list[tuple[str, str]] = []
    odd: list[str] = []

    def other(path: str, kind: str, what: str) -> None:
        why = ("a symbolic link; the store never follows or removes links (see the store guide)"
               if kind == LINK else f"not {what} the writer makes ({'a ' + kind if kind != DIR else 'its name'})")
        odd.append(f"{path}: {why}")

    for s, kind in backend.entries("shards"):
        if kind != DIR or not _valid(check_shard, s):
            other(f"shards/{s}", kind, "a shard folder")
            continue
        for a, akind in backend.entries(f"shards/{s}"):
            if akind != DIR or not _valid(check_attempt, a):
                other(f"shards/{s}/{a}", akind, "an attempt folder")
            else:
                attempts.append((s, a))
    return attempts, odd


def list_attempts(backend: Backend) -> list[tuple[str, str]]:
    """Every (shard, attempt) folder under shards/ that the writer could have made."""
    return scan_shards(backend)[0]


_ARRAY = r"[A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_-]{1,64}\.L[0-9]+"
_ATTEMPT_FILE = re.compile(rf"^(attempt\.json|claim|zarr\.json|{_ARRAY}/zarr\.json|{_ARRAY}/c/[0-9]+/0)$")
_ATTEMPT_DIR = re.compile(rf"^({_ARRAY}|{_ARRAY}/c|{_ARRAY}/c/[0-9]+)$")


def attempt_files(backend: Backend, shard: str, attempt: str) -> tuple[list[str], list[str], str | None]:
    """(files, folders deepest first, None) of an attempt folder holding only what the writer
    makes, with an ``attempt.json`` naming this shard and attempt, or what a removal that
    stopped half-way left of one (only its ``claim``, or empty folders); else
    ([], [], why it is kept)."""
    d = attempt_dir(shard, attempt)
    files, dirs, odd = backend.tree(d)
    if odd:
        return [], [], f"{odd[0]} is a symbolic link or special file; the attempt is kept"
    strays = [f for f in files if not _ATTEMPT_FILE.match(f[len(d) + 1:])]
    strays += [x for x in dirs if x != d and not _ATTEMPT_DIR.match(x[len(d) + 1:])]
    if strays:
        return [], [], f"{strays[0]} is not a file the writer makes; the attempt is kept"
    record = f"{d}/attempt.json"
    if record in files:
        try:
            meta = json.loads(backend.read_bytes(record))
            ok = meta.get("shard") == shard and meta.get("attempt") == attempt
        except (FileNotFoundError, ValueError, AttributeError, StoreError):
            ok = False
    else:  # a removal that stopped half-way removes the record last but for the claim
        ok = files == [] or (files == [f"{d}/claim"] and recorded_age_s(backend, f"{d}/claim", "at") is not None)
    if not ok:
        return [], [], f"{record} is missing, unreadable or names another attempt; the attempt is kept"
    return files, dirs, None


def remove_attempt(backend: Backend, files: list[str], dirs: list[str]) -> None:
    """Remove an attempt folder file by file, its record (``attempt.json``) and then its
    ``claim`` last: a removal that stops half-way leaves a folder that is still recognised."""
    last = [f for f in files if f.count("/") == 3 and f.rsplit("/", 1)[1] in ("attempt.json", "claim")]
    backend.remove_files([f for f in files if f not in last])
    for x in dirs[:-1]:
        backend.remove_dir(x)
    backend.remove_files(sorted(last))  # attempt.json, then claim
    backend.remove_dir(dirs[-1])


def files_bytes(backend: Backend, files: list[str]) -> int:
    total = 0
    for f in files:
        try:
            total += backend.size(f)
        except FileNotFoundError:
            continue
    return total
