"""Manifest files: the Parquet files whose creation commits a shard, checked on every read.

A manifest holds one row per stored key (the ``MANIFESTS`` schema) and, in the Parquet footer's
key-value metadata under ``l2s.manifest``, a small JSON header::

    {"format_version": 2, "kind": "shard" | "compacted" | "tombstone",
     "shards": {shard: attempt}, "bytes": {shard: bytes of its arrays},
     "committed_at": {shard: ISO time}, "supersedes": [manifest names], "deletes": [attempts],
     "replaces": {manifest name: its file_sha256}, "rows": n, "file_sha256": ...}

``file_sha256`` is the sha256 of the whole file with those 64 characters set to zeros. It is
checked on the raw bytes before any parser reads the file, so a flipped bit anywhere in it is
an error that names the file, never a silently changed row nor a crash inside the reader.
The header is what a snapshot reads: which (shard, attempt) pairs the file commits, which
files it replaces (a compaction), which attempts it deletes (a tombstone), and the bytes the
commit wrote (so ``l2s store info`` never walks chunk files).

A compaction names what it replaced by content: ``replaces`` maps each folded file's name to
its ``file_sha256``. A shard's manifest name is reused when the shard is committed again after
a delete, so a name alone would hide the new commit; a file is superseded only when its name
*and* its checksum are listed (:func:`superseded`). ``supersedes`` (names only) is still
written for older readers, and is what a compaction written before ``replaces`` existed is
judged by.

A manifest is immutable once created, so a checked file is not hashed again in the same
process while its (size, mtime, ctime, inode) stay the same, once it is a few seconds old (a
file changed within the filesystem's timestamp granularity could otherwise look unchanged).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from l2s_data.errors import CorruptManifestError, SchemaMismatchError, WriteMismatchError
from l2s_data.schemas import FORMAT_VERSION, MANIFESTS
from l2s_data.store._backend import Backend
from l2s_data.store.contract import (
    COMPACTED_PREFIX, TOMBSTONE_PREFIX, check_array_path, check_attempt, check_exact,
    check_shard,
)

__all__ = [
    "KINDS", "ManifestInfo", "encode_manifest", "decode_info", "read_info", "read_infos", "list_names",
    "read_rows", "check_rows", "manifest_name", "order_by", "KEY_ORDER", "superseded",
]

KINDS = ("shard", "compacted", "tombstone")
META_KEY = b"l2s.manifest"
#: Rows per Parquet row group of a compacted manifest: with rows sorted by key, the row-group
#: statistics let a key lookup skip every group of other keys.
COMPACTED_ROW_GROUP = 65536
#: The order of a compacted manifest's rows.
KEY_ORDER = ("recipe_id", "view", "position", "layer", "sample_id")
#: Columns whose values repeat over many rows (an array's path over its rows, a sample id over
#: its keys). ``read_rows(..., dictionary=True)`` reads them as dictionaries: a whole store's
#: rows held at once (compact, verify) take about a quarter of the memory of plain strings.
REPEATED = ("recipe_id", "view", "position", "sample_id", "shard", "attempt", "array", "dtype")


@dataclass(frozen=True)
class ManifestInfo:
    """The checked header of one manifest file (``name`` is relative to the store root)."""

    name: str
    kind: str
    shards: Mapping[str, str] = field(default_factory=dict)
    bytes: Mapping[str, int] = field(default_factory=dict)
    committed_at: Mapping[str, str] = field(default_factory=dict)
    supersedes: tuple[str, ...] = ()
    deletes: tuple[str, ...] = ()
    rows: int = 0
    #: the sha256 of the whole file (the header's ``file_sha256``): what names its content
    sha256: str = ""
    #: name -> file_sha256 of each file a compaction folded into this one
    replaces: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_data(self) -> bool:
        return self.kind != "tombstone"


def superseded(infos: Iterable[ManifestInfo]) -> Callable[[ManifestInfo], bool]:
    """Whether a manifest is replaced by a compaction among ``infos``: by name and content
    (``replaces``), or, for a compaction that predates ``replaces``, by name."""
    infos = list(infos)
    by_content = {(n, h) for i in infos for n, h in i.replaces.items()}
    by_name = {n for i in infos if not i.replaces for n in i.supersedes}
    return lambda i: (i.name, i.sha256) in by_content or i.name in by_name


def manifest_name(kind: str, token: str) -> str:
    """``manifests/<shard>.parquet`` for a shard, ``manifests/_compacted-<token>.parquet``..."""
    if kind == "shard":
        return f"manifests/{check_shard(token)}.parquet"
    prefix = {"compacted": COMPACTED_PREFIX, "tombstone": TOMBSTONE_PREFIX}[kind]
    return f"manifests/{prefix}{token}.parquet"


def list_names(backend: Backend) -> list[str]:
    return [f"manifests/{n}" for n in backend.listdir("manifests") if n.endswith(".parquet")]


# -- encoding -----------------------------------------------------------------------------------

#: The header field that holds the sha256 of the whole file, computed with its own 64 hex
#: characters set to zeros. It is checked on the raw bytes before any parser sees them: a
#: damaged Parquet footer can abort the process inside the Parquet reader.
_SUM_FIELD = b'"file_sha256": "'
_ZEROS = b"0" * 64
#: Bytes hashed at a time when a header is read: a snapshot's memory does not grow with a part's size.
_BLOCK = 8 << 20


def _write(parts: Iterable[pa.Table], header: Mapping[str, object], row_group_size: int | None) -> bytes:
    schema = MANIFESTS.remove_metadata()
    buf = io.BytesIO()
    # No ARROW:schema blob: the footer's metadata is then exactly our header plus the Parquet
    # schema, and the types come back from the Parquet logical types (check_exact pins them).
    with pq.ParquetWriter(buf, schema, compression="zstd", store_schema=False) as w:
        for part in parts:
            w.write_table(part.cast(schema), row_group_size=row_group_size)
        w.add_key_value_metadata({META_KEY: json.dumps(header).encode()})
    return buf.getvalue()


def _parts(table: pa.Table, order: pa.Array | None, size: int) -> Iterator[pa.Table]:
    """``table``'s rows in ``order``, ``size`` rows at a time: the reordered copy of a whole
    store's rows never exists at once."""
    if order is None:
        yield table
        return
    for at in range(0, len(order), size):
        yield table.take(order[at : at + size])


def encode_manifest(table: pa.Table, *, kind: str, shards: Mapping[str, str],
                    bytes_: Mapping[str, int] | None = None, committed_at: Mapping[str, str] | None = None,
                    supersedes: Sequence[str] = (), deletes: Sequence[str] = (),
                    replaces: Mapping[str, str] | None = None, order: pa.Array | None = None) -> bytes:
    """The bytes of a manifest file holding ``table`` (MANIFESTS schema; its text columns may be
    dictionaries) and its checked header, the rows written in ``order`` (row indices) if given."""
    if kind not in KINDS:
        raise ValueError(f"manifest kind {kind!r} is not one of {KINDS}")
    table = check_exact(table, MANIFESTS, what=f"{kind} manifest")
    if order is not None and len(order) != table.num_rows:
        raise ValueError(f"order has {len(order)} indices for {table.num_rows} rows")
    header: dict[str, object] = {
        "format_version": FORMAT_VERSION, "kind": kind,
        "shards": dict(sorted(shards.items())), "bytes": dict(sorted((bytes_ or {}).items())),
        "committed_at": dict(sorted((committed_at or {}).items())),
        "supersedes": sorted(supersedes), "deletes": sorted(deletes), "rows": table.num_rows,
        "file_sha256": _ZEROS.decode(),
    }
    if replaces:
        header["replaces"] = dict(sorted(replaces.items()))
    group = COMPACTED_ROW_GROUP if kind == "compacted" else None
    data = _write(_parts(table, order, group or max(table.num_rows, 1)), header, group)
    at = data.rindex(_SUM_FIELD + _ZEROS) + len(_SUM_FIELD)
    data = data[:at] + hashlib.sha256(data).hexdigest().encode() + data[at + 64:]
    decode_info("(new manifest)", data)  # the writer checks what every reader will check
    return data


# -- decoding -----------------------------------------------------------------------------------


def _corrupt(name: str, why: str) -> CorruptManifestError:
    return CorruptManifestError(
        f"manifest {name} is corrupt ({why}). Nothing was read from it. If its shard is still on "
        f"disk, `l2s store verify` lists what is affected; otherwise remove the file and rerun the "
        f"extraction to recompute its keys."
    )


def _check_sum(name: str, data: bytes) -> None:
    if len(data) < 12 or data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        raise _corrupt(name, "not a Parquet file: magic bytes missing")
    at = data.rfind(_SUM_FIELD)
    if at < 0:
        raise _corrupt(name, "no l2s.manifest checksum; written by format version 1 or by another tool")
    at += len(_SUM_FIELD)
    want = data[at:at + 64]
    if hashlib.sha256(data[:at] + _ZEROS + data[at + 64:]).hexdigest().encode() != want:
        raise _corrupt(name, "file checksum mismatch")


def _checked_footer(name: str, f: BinaryIO) -> bytes:
    """The file's checksum verified by streaming it (bounded memory, whatever its size), and
    its footer as a Parquet buffer of its own: the bytes the hash covered, never read again."""
    size = f.seek(0, os.SEEK_END)
    if size < 12:
        raise _corrupt(name, "not a Parquet file: magic bytes missing")
    f.seek(size - 8)
    end = f.read(8)
    footer_len = int.from_bytes(end[:4], "little")
    if end[4:] != b"PAR1" or footer_len > size - 12:
        raise _corrupt(name, "not a Parquet file: magic bytes missing")
    start = size - 8 - footer_len
    f.seek(start)
    tail = f.read(size - start)
    at = tail.rfind(_SUM_FIELD)
    if at < 0:
        raise _corrupt(name, "no l2s.manifest checksum; written by format version 1 or by another tool")
    at += len(_SUM_FIELD)
    want = tail[at:at + 64]
    h = hashlib.sha256()
    f.seek(0)
    left = start
    first = True
    while left:
        block = f.read(min(left, _BLOCK))
        if not block:
            raise _corrupt(name, "shorter than its footer says")
        if first and block[:4] != b"PAR1":
            raise _corrupt(name, "not a Parquet file: magic bytes missing")
        first = False
        h.update(block)
        left -= len(block)
    h.update(tail[:at] + _ZEROS + tail[at + 64:])
    if h.hexdigest().encode() != want:
        raise _corrupt(name, "file checksum mismatch")
    return b"PAR1" + tail


def decode_info(name: str, data: bytes) -> ManifestInfo:
    """The header of manifest bytes, after checking the file's checksum (CorruptManifestError)."""
    _check_sum(name, data)  # before any parser reads a byte of it
    return _parse_header(name, data)


def _parse_header(name: str, data: bytes) -> ManifestInfo:
    """The header of checked manifest bytes (the whole file, or its footer alone)."""
    try:
        md = pq.ParquetFile(pa.BufferReader(data)).metadata
        header = json.loads((md.metadata or {})[META_KEY])
        kind = header["kind"]
        if kind not in KINDS or header["format_version"] != FORMAT_VERSION:
            raise ValueError(f"kind {kind!r}, format version {header['format_version']!r}")
        shards = {check_shard(s): check_attempt(a) for s, a in dict(header["shards"]).items()}
        info = ManifestInfo(
            name=name, kind=kind, shards=shards,
            bytes={str(s): int(b) for s, b in dict(header["bytes"]).items()},
            committed_at={str(s): str(t) for s, t in dict(header["committed_at"]).items()},
            supersedes=tuple(_check_name(n) for n in header["supersedes"]),
            deletes=tuple(check_attempt(a) for a in header["deletes"]), rows=int(header["rows"]),
            sha256=_hex64(header["file_sha256"]),
            replaces={_check_name(n): _hex64(h) for n, h in dict(header.get("replaces", {})).items()},
        )
    except (KeyError, TypeError, ValueError, OSError, pa.ArrowException, WriteMismatchError) as exc:
        raise _corrupt(name, str(exc)) from exc
    if md.num_rows != info.rows:
        raise _corrupt(name, f"{md.num_rows} rows, header says {info.rows}")
    return info


def _hex64(value: object) -> str:
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise ValueError(f"{value!r} is not a sha256")
    return value


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.startswith("manifests/") or "/" in name[len("manifests/"):] \
            or not name.endswith(".parquet") or ".." in name:
        raise ValueError(f"superseded name {name!r} is not a manifest file name")
    return name


_CACHE: dict[tuple, ManifestInfo] = {}
_CACHE_LOCK = threading.Lock()


_SETTLED_NS = 3_000_000_000


def _identity(backend: Backend, name: str) -> tuple | None:
    """A cache key for a local file old enough that any change would move its timestamps."""
    if not backend.is_local:
        return None
    st = os.stat(backend.path(name))
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < _SETTLED_NS:
        return None
    return (backend.path(name), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def read_info(backend: Backend, name: str) -> ManifestInfo:
    """The checked header of one manifest (FileNotFoundError if it is gone meanwhile)."""
    ident = _identity(backend, name)
    if ident is not None:
        with _CACHE_LOCK:
            hit = _CACHE.get(ident)
        if hit is not None:
            return hit
    with backend.open_file(name) as f:
        info = _parse_header(name, _checked_footer(name, f))
    if ident is not None:
        with _CACHE_LOCK:
            if len(_CACHE) > 100_000:
                _CACHE.clear()
            _CACHE[ident] = info
    return info


def read_infos(backend: Backend, names: Sequence[str]) -> tuple[list[ManifestInfo], list[str]]:
    """Headers of several manifests, and the names that vanished meanwhile (a compaction or a
    delete removed them), read in parallel: on an object store to hide latency, on a local disk
    because hashing lets go of the GIL."""

    def one(name: str) -> ManifestInfo | str:
        try:
            return read_info(backend, name)
        except FileNotFoundError:
            return name

    if len(names) <= 4:
        got = [one(n) for n in names]
    else:
        # sha256 lets go of the GIL: on a local disk two threads hash two parts at once.
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1) if backend.is_local else 16) as pool:
            got = list(pool.map(one, names))
    return [g for g in got if isinstance(g, ManifestInfo)], [g for g in got if isinstance(g, str)]


def read_rows(backend: Backend, info: ManifestInfo, *, dictionary: bool = False) -> pa.Table:
    """Every row of one checked manifest, with its paths checked too (``dictionary``: the
    ``REPEATED`` columns as dictionaries, one per column)."""
    data = backend.read_bytes(info.name)
    again = decode_info(info.name, data)
    if again != info:
        raise _corrupt(info.name, "changed since it was first read")
    try:
        table = pq.read_table(pa.BufferReader(data), read_dictionary=list(REPEATED) if dictionary else None)
        if dictionary:
            table = table.unify_dictionaries()
    except (OSError, pa.ArrowException) as exc:
        raise _corrupt(info.name, f"unreadable rows: {exc}") from exc
    try:
        table = check_exact(table, MANIFESTS, what=f"manifest {info.name}")
    except SchemaMismatchError as exc:
        raise _corrupt(info.name, str(exc)) from exc
    check_rows(table, info.name, info.shards)
    return table


def order_by(table: pa.Table, columns: Sequence[str]) -> pa.Array:
    """Row indices that sort ``table`` by ``columns`` ascending; a dictionary column sorts by its
    values (pyarrow sorts no dictionary column itself: each value is replaced by its rank)."""
    table = table.select(list(columns)).unify_dictionaries()  # one dictionary per column
    keys = {}
    for c in columns:
        col = table[c]
        if pa.types.is_dictionary(col.type):
            if not col.num_chunks:
                col = col.cast(col.type.value_type)
            else:
                values = col.chunk(0).dictionary
                rank = pc.rank(values, sort_keys="ascending", tiebreaker="dense").cast(pa.int32())
                col = pa.chunked_array([rank.take(ch.indices) for ch in col.chunks], pa.int32())
        keys[c] = col
    return pc.sort_indices(pa.table(keys), sort_keys=[(c, "ascending") for c in columns])


def check_rows(table: pa.Table, name: str, shards: Mapping[str, str] | None = None) -> pa.Table:
    """Check every row's location with the writer's name rules (and, given the header's
    ``shards``, that each row belongs to a (shard, attempt) the header commits)."""
    if table.num_rows == 0:
        return table
    cols = ["shard", "attempt", "view", "position", "layer", "array"]
    distinct = table.select(cols).group_by(cols).aggregate([])
    for shard, attempt, view, position, layer, array in zip(*(distinct[c].to_pylist() for c in cols)):
        try:
            check_array_path(array, shard, attempt, view, position, layer)
        except WriteMismatchError as exc:
            raise _corrupt(name, str(exc)) from exc
        if shards is not None and shards.get(shard) != attempt:
            raise _corrupt(name, f"row of shard {shard!r} attempt {attempt!r}, which its header does not commit")
    return table


def tombstone_table() -> pa.Table:
    return MANIFESTS.empty_table()


def concat_rows(tables: Iterable[pa.Table]) -> pa.Table:
    tables = list(tables)
    return pa.concat_tables(tables) if tables else MANIFESTS.empty_table()


def drop_attempts(table: pa.Table, attempts: Iterable[str]) -> pa.Table:
    gone = pa.array(sorted(set(attempts)), pa.string())
    if not len(gone) or not table.num_rows:
        return table
    return table.filter(pc.invert(pc.is_in(table["attempt"], value_set=gone)))
