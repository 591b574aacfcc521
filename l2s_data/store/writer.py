"""Shard attempts: write immutable Zarr arrays into a private folder, then commit a manifest.

::

    with store.shard_writer("s-000017", rid, sample_ids) as w:
        w.write("p2s", "completion_last", 14, p2s_rows, "float32")   # [len(sample_ids), D]
        w.write("pos", "completion_last", 14, pos_rows, "bfloat16")
    w.won   # True: committed; False: another attempt committed this shard first (orphan)

Each attempt writes ``shards/<shard>/<attempt-uuid>/``, which no other process touches
(DESIGN 4.2: two writers never share a Zarr shard). Leaving the ``with`` block normally commits:

1. the attempt folder is checked: ``attempt.json`` and every array written are still there;
2. ``claim`` is created in it if absent. ``gc`` creates the same file before it removes an
   attempt, so exactly one of them wins: a writer never commits a folder that gc is removing,
   and gc never removes one that a writer commits;
3. unless a commit of the shard already counts (``snapshot.commit_of``: its own manifest or a
   compaction holding it, tombstones applied), the manifest (one row per key, with its
   checksums; see ``manifests``) is created as ``manifests/<shard>.parquet`` only if absent:
   that single create is the commit;
4. after the create, the same rule is asked again: ``won`` is True only if this attempt's
   commit is the one every later snapshot reads (a compaction can fold the shard's first
   commit away between step 3's check and its create; that first commit then keeps counting).

A crash or an exception before it leaves an orphan attempt that readers never see and
``l2s store gc`` removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from l2s_data.errors import LeaseHeldError, StoreError, WriteMismatchError
from l2s_data.schemas import FORMAT_VERSION, MANIFESTS, ZARR_ATTRIBUTES_KEY
from l2s_data.store._backend import Backend
from l2s_data.store._zarr_write import write_array, write_group
from l2s_data.store.contract import (
    DTYPES, array_name, attempt_dir, check_exact, check_part, check_shard, crc32c, now, to_float32, to_stored,
)
from l2s_data.store.manifests import encode_manifest, manifest_name
from l2s_data.store.snapshot import commit_of

__all__ = ["ShardWriter", "DEFAULT_CHUNK_BYTES", "ZARR_WRITERS"]

#: Target bytes of one chunk (rows x D x itemsize). Whole chunks are the unit of every read, so
#: big enough to amortise a request on an object store, small enough to shuffle well.
DEFAULT_CHUNK_BYTES = 2 << 20

#: How arrays reach the disk. ``"direct"`` (default) writes zarr.json and chunk files itself
#: (see ``_zarr_write``: the same bytes as zarr-python, tested; 2.7-4.9x faster a 128-array shard);
#: ``"zarr-python"`` goes through ``zarr.create_array``. Default from ``$L2S_ZARR_WRITER``.
ZARR_WRITERS = ("direct", "zarr-python")
ZARR_WRITER_ENV = "L2S_ZARR_WRITER"


@dataclass
class _Written:
    view: str
    position: str
    layer: int
    dtype: str
    dim: int
    chunk_rows: int
    path: str
    norms: np.ndarray
    checksums: list[str]


class ShardWriter:
    """One attempt at one shard. Use as a context manager; see the module docstring."""

    def __init__(self, backend: Backend, shard_id: str, recipe_id: str, sample_ids: Sequence[str], *,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, zarr_writer: str | None = None,
                 on_commit: Callable[[ShardWriter], None] | None = None,
                 settle: Callable[[], object] | None = None):
        """``on_commit(writer)`` runs after this attempt won. ``settle()`` is called when the
        shard's manifest name is held by a commit that no longer counts (a delete that stopped
        before removing it); it compacts, which removes such files, and the create is retried."""
        check_shard(shard_id)
        if not isinstance(recipe_id, str) or not recipe_id:
            raise WriteMismatchError(f"recipe_id must be a non-empty string, got {recipe_id!r}.")
        ids = list(sample_ids)
        if not ids:
            raise WriteMismatchError(f"shard {shard_id}: sample_ids is empty; a shard holds >= 1 sample.")
        bad = [s for s in ids if not isinstance(s, str) or not s]
        if bad:
            raise WriteMismatchError(f"shard {shard_id}: sample ids must be non-empty strings, got {bad[:3]!r}.")
        if len(set(ids)) != len(ids):
            dup = sorted({s for s in ids if ids.count(s) > 1})[:3]
            raise WriteMismatchError(f"shard {shard_id}: duplicate sample ids {dup}; each sample once per shard.")
        if chunk_bytes < 1:
            raise WriteMismatchError(f"chunk_bytes must be >= 1, got {chunk_bytes}.")
        zarr_writer = zarr_writer or os.environ.get(ZARR_WRITER_ENV) or "direct"
        if zarr_writer not in ZARR_WRITERS:
            raise StoreError(
                f"zarr writer {zarr_writer!r} (argument or ${ZARR_WRITER_ENV}) is not one of "
                f"{ZARR_WRITERS}; unset ${ZARR_WRITER_ENV} for the default 'direct'."
            )
        self.backend = backend
        self.shard = shard_id
        self.recipe_id = recipe_id
        self.sample_ids = ids
        self.chunk_bytes = int(chunk_bytes)
        self.zarr_writer = zarr_writer
        self.attempt = uuid.uuid4().hex
        self.dir = attempt_dir(shard_id, self.attempt)
        self.won: bool | None = None
        self._written: dict[tuple[str, str, int], _Written] = {}
        self._dim: int | None = None
        self._zarr: Any = None
        self._group_written = False
        self._lock = threading.Lock()  # write() may run from several threads (one key each)
        self._ids_hash = hashlib.sha256("\n".join(ids).encode()).hexdigest()
        self._entered = False
        self._on_commit = on_commit
        self._settle = settle
        self.bytes = 0

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> ShardWriter:
        if self._entered:
            raise StoreError(f"shard writer {self.shard}/{self.attempt} was already used; make a new one.")
        self._entered = True
        meta = {
            "format_version": FORMAT_VERSION, "shard": self.shard, "attempt": self.attempt,
            "recipe_id": self.recipe_id, "rows": len(self.sample_ids),
            "started_at": now().isoformat(), "host": socket.gethostname(), "pid": os.getpid(),
            "sample_ids": self.sample_ids,
        }
        data = json.dumps(meta).encode()
        self.backend.write_bytes(f"{self.dir}/attempt.json", data)
        self.bytes += len(data)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        # On an exception the attempt stays an uncommitted orphan: nothing points at it.
        return False

    # -- writing ---------------------------------------------------------------------------
    def write(self, view: str, position: str, layer: int, array: Any, dtype: str) -> None:
        """Store ``array`` ``[len(sample_ids), D]`` (rows aligned to sample_ids) as one Zarr array.

        Every check runs before a byte is written: names, dtype, rank, row count, D equal to
        the shard's earlier arrays, and no (view, position, layer) written twice.
        """
        if not self._entered or self.won is not None:
            raise StoreError(f"shard {self.shard}: write() outside its `with store.shard_writer(...)` block.")
        check_part("view", view)
        check_part("position", position)
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
            raise WriteMismatchError(f"shard {self.shard}: layer must be an int >= 0, got {layer!r}.")
        layer = int(layer)
        key = (view, position, layer)
        what = f"shard {self.shard} key {key} (recipe {self.recipe_id})"
        if dtype not in DTYPES:
            raise WriteMismatchError(f"{what}: dtype {dtype!r} is not one of {DTYPES}.")
        if key in self._written:
            raise WriteMismatchError(f"{what}: already written in this attempt; each key once per shard.")
        shape = tuple(getattr(array, "shape", ()))
        if len(shape) != 2 or shape[0] != len(self.sample_ids) or shape[1] < 1:
            raise WriteMismatchError(
                f"{what}: got shape {shape}, expected [{len(self.sample_ids)}, D] "
                f"(one row per sample id, in the order given to shard_writer)."
            )
        if self._dim is not None and shape[1] != self._dim:
            raise WriteMismatchError(
                f"{what}: got D={shape[1]}, but this shard's earlier arrays have D={self._dim}."
            )
        stored = to_stored(array, dtype, what=what)
        self._dim = shape[1]
        self._write_array(key, stored, dtype)

    def _write_array(self, key: tuple[str, str, int], stored: np.ndarray, dtype: str) -> None:
        view, position, layer = key
        n, dim = stored.shape
        chunk_rows = max(1, min(n, self.chunk_bytes // (dim * stored.dtype.itemsize)))
        name = array_name(view, position, layer)
        attrs = {
            ZARR_ATTRIBUTES_KEY: {
                "format_version": FORMAT_VERSION, "recipe_id": self.recipe_id, "shard": self.shard,
                "attempt": self.attempt, "view": view, "position": position, "layer": layer,
                "logical_dtype": dtype, "sample_ids_sha256": self._ids_hash,
            }
        }
        if self.zarr_writer == "direct":
            backend = self.backend
            with self._lock:
                if not self._group_written:  # zarr-python writes the implicit root group too
                    self.bytes += write_group(backend, self.dir)
                    self._group_written = True
            nbytes = write_array(backend, f"{self.dir}/{name}", stored, chunk_rows, attrs)
        else:
            self._write_zarr_python(name, stored, chunk_rows, attrs)
            nbytes = -(-n // chunk_rows) * (chunk_rows * dim * stored.dtype.itemsize + 4)
        logical = to_float32(stored, dtype)
        norms = np.linalg.norm(logical, axis=1).astype(np.float32)
        checksums = [f"{crc32c(r):08x}" for r in stored]
        with self._lock:
            self.bytes += nbytes
            self._written[key] = _Written(view, position, layer, dtype, dim, chunk_rows,
                                          f"{self.dir}/{name}", norms, checksums)

    def _write_zarr_python(self, name: str, stored: np.ndarray, chunk_rows: int,
                           attrs: dict[str, Any]) -> None:
        # Only the zarr-python writer pays zarr's import (0.4 s); the default writer needs none.
        import zarr
        from zarr.codecs import Crc32cCodec

        with self._lock:
            if self._zarr is None:
                self._zarr = self.backend.zarr_store(self.dir)
        n, dim = stored.shape
        arr = zarr.create_array(
            self._zarr, name=name, shape=(n, dim), chunks=(chunk_rows, dim), dtype=stored.dtype,
            fill_value=0, compressors=[Crc32cCodec()], filters=None, attributes=attrs,
            # Every chunk must exist on disk, so verify can tell "missing" from "zero".
            config={"write_empty_chunks": True}, zarr_format=3,
        )
        arr[...] = stored

    # -- commit ----------------------------------------------------------------------------
    def manifest(self, written_at: Any = None) -> pa.Table:
        """The manifest rows of everything written so far (MANIFESTS schema)."""
        n = len(self.sample_ids)
        cols: dict[str, list] = {f.name: [] for f in MANIFESTS}
        written_at = written_at or now()
        for w in self._written.values():
            cols["recipe_id"] += [self.recipe_id] * n
            cols["view"] += [w.view] * n
            cols["position"] += [w.position] * n
            cols["layer"] += [w.layer] * n
            cols["sample_id"] += self.sample_ids
            cols["shard"] += [self.shard] * n
            cols["attempt"] += [self.attempt] * n
            cols["array"] += [w.path] * n
            cols["row"] += list(range(n))
            cols["chunk_rows"] += [w.chunk_rows] * n
            cols["dtype"] += [w.dtype] * n
            cols["dim"] += [w.dim] * n
            cols["norm"] += w.norms.tolist()
            cols["checksum"] += w.checksums
            cols["written_at"] += [written_at] * n
        table = pa.Table.from_pydict(cols, schema=MANIFESTS)
        return check_exact(table, MANIFESTS, what=f"manifest of shard {self.shard}")

    def commit(self) -> bool:
        """Check the attempt folder, claim it, and create the shard's manifest if absent.
        Sets and returns ``won``."""
        if self.won is not None:
            return self.won
        if not self._written:
            raise WriteMismatchError(
                f"shard {self.shard}: nothing was written; call w.write(...) at least once before "
                f"leaving the block."
            )
        stamp = now()
        data = encode_manifest(self.manifest(stamp), kind="shard", shards={self.shard: self.attempt},
                               bytes_={self.shard: self.bytes}, committed_at={self.shard: stamp.isoformat()})
        present = set(self.backend.listdir(self.dir))
        expected = {"attempt.json"} | {array_name(w.view, w.position, w.layer) for w in self._written.values()}
        missing = sorted(expected - present)
        if missing:
            raise StoreError(
                f"shard {self.shard} attempt {self.attempt}: {missing[:3]} vanished from its folder "
                f"before the commit (removed by `l2s store gc --grace` shorter than the write?). "
                f"Nothing was committed; rerun the extraction to recompute the shard."
            )
        claim = json.dumps({"by": "writer", "pid": os.getpid(), "host": socket.gethostname(),
                            "at": stamp.isoformat()}).encode()
        if not self.backend.put_if_absent(f"{self.dir}/claim", claim):
            raise StoreError(
                f"shard {self.shard} attempt {self.attempt} was claimed by `l2s store gc` before it "
                f"could commit; nothing was committed. Rerun the extraction to recompute the shard."
            )
        name = manifest_name("shard", self.shard)
        if commit_of(self.backend, self.shard) is not None:
            self.won = False  # committed earlier (its own file, or folded into a compaction)
        else:
            created = self.backend.put_if_absent(name, data)
            if not created and commit_of(self.backend, self.shard) is None:
                # The name is held by a commit that no longer counts (deleted or replaced).
                if self._settle is not None:
                    try:
                        self._settle()
                    except LeaseHeldError:
                        pass  # said below
                if commit_of(self.backend, self.shard) is None:
                    created = self.backend.put_if_absent(name, data)
                    if not created and commit_of(self.backend, self.shard) is None:
                        raise StoreError(
                            f"shard {self.shard}: {name} is held by a commit that was deleted, and "
                            f"could not be removed now (is maintenance running, or did it die holding "
                            f"the lease?). Nothing was committed; run `l2s store compact` once the "
                            f"lease is free, then rerun the extraction."
                        )
            self.won = created and commit_of(self.backend, self.shard) == self.attempt
        if self.won and self._on_commit is not None:
            self._on_commit(self)
        return self.won
