"""The store's contract: names and paths, canonical JSON, hashes and recipe ids, dtypes.

This is the bottom layer of ``l2s_data.store``: it imports nothing else of the store, and
every other module takes these rules from here (a rule is written once). Layout under the
store root::

    l2s-store.json                        marker + format version (created once)
    recipes/<recipe_id>[-<name>].parquet
    samples/<content hash>.parquet        memberships/, errors/, runs/, evaluations/ likewise
    manifests/<shard>.parquet             its creation commits the shard
    manifests/_compacted-<hash>.parquet   many manifests folded into one (``compact``)
    manifests/_tombstone-<hash>.parquet   a committed delete: attempts that no longer count
    leases/<name>-<n>.json                maintenance leases (create-if-absent, with expiry)
    shards/<shard>/<attempt>/attempt.json
    shards/<shard>/<attempt>/claim        created once: by the writer that commits, or by gc
    shards/<shard>/<attempt>/<view>.<position>.L<layer>/   one Zarr v3 array [n, D]

Every path read from a manifest is checked with :func:`check_array_path` before it is used,
so a damaged or forged manifest can never make the store read or delete outside its root.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import crc32c as _crc32c
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from l2s_data.errors import SchemaMismatchError, WriteMismatchError
from l2s_data.schemas import FORMAT_VERSION

MARKER = "l2s-store.json"
COMPACTED_PREFIX = "_compacted-"
TOMBSTONE_PREFIX = "_tombstone-"
#: Folders of committed Parquet parts (content-addressed, create-if-absent).
PART_TABLES = ("recipes", "samples", "memberships", "errors", "runs", "evaluations", "extractions")
DTYPES = ("float32", "float16", "bfloat16")
#: numpy dtype each logical dtype is stored as (Zarr v3 has no bfloat16: its bits as uint16).
STORED_DTYPE = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "bfloat16": np.dtype("<u2")}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_PART = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ATTEMPT = re.compile(r"^[0-9a-f]{32}$")


def check_name(kind: str, value: object, *, fix: str = "") -> str:
    """Shard ids, views and positions become path components: keep them to a safe alphabet."""
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        raise WriteMismatchError(
            f"{kind} {value!r} is not a valid name: expected 1-128 characters from "
            f"[A-Za-z0-9_.-], starting with a letter or digit{fix}."
        )
    return value


def check_part(kind: str, value: object) -> str:
    """Views and positions: no dots, because the array name joins them with dots."""
    if not isinstance(value, str) or not _PART.match(value):
        raise WriteMismatchError(
            f"{kind} {value!r} is not valid: expected 1-64 characters from [A-Za-z0-9_-] "
            f"(e.g. 'p2s', 'completion_last', 'sequence_last-1')."
        )
    return value


def check_attempt(value: object) -> str:
    """Attempt ids are uuid4 hex strings (32 lowercase hex characters)."""
    if not isinstance(value, str) or not _ATTEMPT.match(value):
        raise WriteMismatchError(f"attempt id {value!r} is not valid: expected 32 lowercase hex characters.")
    return value


def check_shard(value: object) -> str:
    """A shard id as the writer accepts it: a safe name that is not reserved (no leading '_')."""
    check_name("shard id", value, fix=" (e.g. 's-000017')")
    if value.startswith("_"):  # type: ignore[union-attr]
        raise WriteMismatchError(f"shard id {value!r} may not start with '_' (reserved for store files).")
    return value  # type: ignore[return-value]


def array_name(view: str, position: str, layer: int) -> str:
    return f"{view}.{position}.L{layer}"


def array_path(shard: str, attempt: str, view: str, position: str, layer: int) -> str:
    """Where the writer puts one key's array; every other module derives it from here."""
    return f"{attempt_dir(shard, attempt)}/{array_name(view, position, layer)}"


def check_array_path(path: object, shard: object, attempt: object, view: object, position: object,
                     layer: object) -> str:
    """``path`` if it is exactly what the writer's name rules give for these fields, else
    WriteMismatchError. Called on every path read from a manifest before it is used."""
    try:
        want = array_path(check_shard(shard), check_attempt(attempt), check_part("view", view),
                          check_part("position", position), int(layer))  # type: ignore[arg-type]
        if isinstance(layer, bool) or int(layer) < 0:  # type: ignore[arg-type]
            raise ValueError(layer)
    except (WriteMismatchError, TypeError, ValueError) as exc:
        raise WriteMismatchError(f"manifest row names an invalid location ({exc}).") from exc
    if path != want:
        raise WriteMismatchError(
            f"manifest row's array path {path!r} is not where the writer puts that key ({want!r})."
        )
    return want


def attempt_dir(shard: str, attempt: str) -> str:
    return f"shards/{shard}/{attempt}"


def manifest_path(shard: str) -> str:
    return f"manifests/{shard}.parquet"


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def canonical_json(obj: Any, *, what: str = "value") -> str:
    """Sorted keys, no spaces, UTF-8, finite numbers only: the same dict always gives the
    same text. The one canonical form of the project (recipe ids, behaviors, manifests)."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SchemaMismatchError(
            f"{what} is not JSON-serialisable ({exc}); use dicts, lists, strings, "
            f"finite numbers, booleans and None only."
        ) from exc


def sha256_hex(data: bytes | str, n: int = 32) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:n]


def crc32c(data: Any, value: int = 0) -> int:
    """The CRC-32C (Castagnoli) of ``data`` (any contiguous buffer), continued from ``value``.

    Chunk files end in this checksum (Zarr's ``crc32c`` codec), and every read checks it. The
    library computes it in hardware and lets go of the GIL while it does, so a reader thread
    checks one chunk while the training loop gathers rows from another.
    """
    return _crc32c.crc32c(data, value)


def recipe_id(spec: Mapping[str, Any]) -> str:
    """A recipe's id: the first 32 hex characters of the sha256 of its canonical JSON."""
    return sha256_hex(canonical_json(dict(spec), what="recipe spec"))


# -- tables -------------------------------------------------------------------------------


def conform(table: pa.Table | Sequence[Mapping[str, Any]], schema: pa.Schema, *, what: str,
            defaults: Mapping[str, Any] | None = None) -> pa.Table:
    """Return ``table`` with exactly ``schema``, or raise SchemaMismatchError saying why.

    Unknown columns are refused; missing nullable columns become nulls; missing columns with a
    default get the default; a column whose type differs is cast only if the cast is safe.
    """
    defaults = dict(defaults or {})
    if not isinstance(table, pa.Table):
        rows = [dict(r) for r in table]
        for r in rows:
            for k, v in defaults.items():
                r.setdefault(k, v)
        unknown = sorted({k for r in rows for k in r} - set(schema.names))
        if unknown:
            raise SchemaMismatchError(
                f"{what}: unknown column(s) {unknown}; expected columns {schema.names}."
            )
        try:
            return conform(pa.Table.from_pylist(rows, schema=_nullable(schema)), schema, what=what)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise SchemaMismatchError(f"{what}: rows do not fit the schema ({exc}).") from exc
    unknown = [n for n in table.column_names if n not in schema.names]
    if unknown:
        raise SchemaMismatchError(
            f"{what}: unknown column(s) {unknown}; expected exactly {schema.names}."
        )
    cols = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            if col.type != field.type:
                try:
                    col = col.cast(field.type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                    raise SchemaMismatchError(
                        f"{what}: column {field.name!r} has type {table.column(field.name).type}, "
                        f"expected {field.type} (no safe cast: {exc})."
                    ) from exc
        elif field.name in defaults:
            col = pa.array([defaults[field.name]] * table.num_rows, type=field.type)
        elif field.nullable:
            col = pa.nulls(table.num_rows, type=field.type)
        else:
            raise SchemaMismatchError(
                f"{what}: required column {field.name!r} is missing; expected columns {schema.names}."
            )
        if not field.nullable and col.null_count:
            raise SchemaMismatchError(
                f"{what}: column {field.name!r} has {col.null_count} null value(s) but may not be null."
            )
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def _nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)


def check_exact(table: pa.Table, schema: pa.Schema, *, what: str) -> pa.Table:
    """A file read back must carry exactly the pinned schema (names, types, nullability). A
    dictionary column counts as its value type: Parquet files carry no dictionary type (the
    store writes no Arrow schema), so one is there only because the reader asked for it."""
    got = pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
                     for f in table.schema.remove_metadata()])
    want = schema.remove_metadata()
    if not got.equals(want):
        diff = [
            f"{f.name}: {f.type}{'' if f.nullable else ' not null'}" for f in got if f not in want
        ] or ["(column set or order differs)"]
        raise SchemaMismatchError(
            f"{what} does not match the {schema.metadata.get(b'l2s.table', b'?').decode()} schema "
            f"(format version {FORMAT_VERSION}): unexpected {diff}; expected {want.names}. "
            f"It was not written by this version of l2s-data: remove it or rewrite it."
        )
    return table.replace_schema_metadata(schema.metadata)


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def content_hash(table: pa.Table) -> str:
    """Hash of a table's content (Arrow IPC of its data): equal tables give equal names."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema.remove_metadata()) as w:
        w.write_table(table.combine_chunks())
    return sha256_hex(sink.getvalue().to_pybytes())


# -- dtypes -------------------------------------------------------------------------------


def to_stored(array: Any, dtype: str, *, what: str) -> np.ndarray:
    """Convert a float ndarray / tensor to the stored numpy array for ``dtype`` (C-contiguous)."""
    if dtype not in DTYPES:
        raise WriteMismatchError(f"{what}: dtype {dtype!r} is not one of {DTYPES}.")
    if type(array).__module__.startswith("torch"):
        import torch  # only when given a tensor: writers of numpy arrays never import torch

        if not isinstance(array, torch.Tensor) or not array.is_floating_point():
            raise WriteMismatchError(f"{what}: got a {getattr(array, 'dtype', type(array))} tensor; expected floating point.")
        t = array.detach().to("cpu")
        if dtype == "bfloat16":
            return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view("<u2")
        return np.ascontiguousarray(t.to(getattr(torch, dtype)).numpy())
    if isinstance(array, np.ndarray):
        if array.dtype.kind != "f":
            raise WriteMismatchError(
                f"{what}: got a numpy array of dtype {array.dtype}; expected floating point."
            )
        if dtype == "bfloat16":
            return float32_to_bfloat16_bits(np.asarray(array, dtype=np.float32))
        return np.ascontiguousarray(array, dtype=STORED_DTYPE[dtype])
    raise WriteMismatchError(
        f"{what}: got {type(array).__name__}; expected a numpy array or torch tensor [n, D]."
    )


def float32_to_bfloat16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits as uint16, rounding to nearest even like torch (NaN stays NaN)."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)  # quiet NaN, sign kept
    return rounded


def to_float32(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values -> float32 (bfloat16 bits are shifted into the high half of a float32)."""
    if dtype == "bfloat16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(np.float32, copy=False)
