"""The activation store: a folder at a URL holding Zarr shard attempts and committed Parquet.

::

    store = Store.open("runs/store", create=True)          # or "s3://bucket/store"
    rid = store.put_recipe({"model": "...", "layers": [14]}, name="llava-safety")
    with store.shard_writer("s-0", rid, ids) as w:
        w.write("p2s", "completion_last", 14, v, "float32")   # [len(ids), D]
    snap = store.snapshot()
    x = snap.read(rid, "p2s", "completion_last", 14, ids)     # float32 [len(ids), D]
    store.sql("SELECT view, count(*) FROM manifests GROUP BY view")

``Store`` is a thin facade: it opens the backend and composes the layers below it (tables,
snapshots, the writer, the catalog, the loader and the maintenance operations), each of which
gets what it needs as arguments. See DESIGN.md section 4 for the invariants.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from l2s_data.errors import L2SError, StoreAccessError, StoreError, StoreNotFoundError
from l2s_data.schemas import FORMAT_VERSION, MEMBERSHIPS, SAMPLES
from l2s_data.store import compaction, ops
from l2s_data.store._backend import Backend, open_backend
from l2s_data.store.catalog import Catalog
from l2s_data.store.contract import MARKER, conform, now
from l2s_data.store.export import export_catalog
from l2s_data.store.sandbox import parse_one
from l2s_data.store.snapshot import Key, Snapshot, commit_of, take_snapshot
from l2s_data.store.tables import Tables
from l2s_data.store.writer import DEFAULT_CHUNK_BYTES, ShardWriter

__all__ = ["Store"]


def _access_message(url: str, exc: OSError) -> str:
    what = "refused access" if isinstance(exc, PermissionError) else (
        "found no such bucket or folder" if isinstance(exc, FileNotFoundError) else "failed")
    return (
        f"cannot open the store at {url}: the filesystem {what} ({type(exc).__name__}: {exc}). "
        f"Check the credentials (for s3: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
        f"the instance role), that they may list, read and write that bucket and prefix, that the "
        f"bucket exists, and the URL."
    )


class Store:
    """Open with :meth:`Store.open`. Thread-safe for reads; each writer owns its attempt."""

    def __init__(self, backend: Backend):
        self._backend = backend
        self._tables = Tables(backend)
        self.url: str = backend.url
        self._commits = itertools.count()  # this process's commits through this store

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str | os.PathLike[str], *, create: bool = False) -> Store:
        """Open the store at a local path or fsspec URL; ``create=True`` makes it if absent.

        A filesystem that refuses access (wrong credentials, no permission, a missing bucket)
        raises :class:`StoreAccessError` saying so, never the filesystem's own exception."""
        try:
            return cls._open(url, create=create)
        except L2SError:
            raise
        except OSError as exc:
            raise StoreAccessError(_access_message(str(url), exc)) from exc

    @classmethod
    def _open(cls, url: str | os.PathLike[str], *, create: bool) -> Store:
        backend = open_backend(url)
        if backend.is_local and os.path.exists(backend.root) and not os.path.isdir(backend.root):
            raise StoreNotFoundError(
                f"{backend.url} is a file, not a store folder. Pass the store's folder (the one "
                f"holding {MARKER}), or a new path to create one."
            )
        if not backend.exists(MARKER):
            if not create:
                bucket = backend.root.split("/", 1)[0]
                if not backend.is_local and not backend.fs.exists(bucket):
                    raise StoreNotFoundError(
                        f"no l2s-data store at {backend.url}: the bucket {bucket!r} does not exist, or "
                        f"these credentials cannot see it. Check the URL and the credentials."
                    )
                raise StoreNotFoundError(
                    f"no l2s-data store at {backend.url} (no {MARKER} there). Create one with "
                    f"Store.open(url, create=True), or check the URL."
                )
            backend.makedirs("")
            marker = {"format": "l2s-data store", "format_version": FORMAT_VERSION, "created_at": now().isoformat()}
            backend.put_if_absent(MARKER, json.dumps(marker, indent=1).encode())
        try:
            version = int(json.loads(backend.read_bytes(MARKER)).get("format_version", -1))
        except (ValueError, TypeError, AttributeError) as exc:
            raise StoreError(f"{backend.url}/{MARKER} is not a valid store marker ({exc}).") from exc
        if version > FORMAT_VERSION:
            raise StoreError(
                f"store {backend.url} has format version {version}, newer than this l2s-data's "
                f"{FORMAT_VERSION}: upgrade l2s-data to read it."
            )
        if version < FORMAT_VERSION:
            raise StoreError(
                f"store {backend.url} has format version {version}; this l2s-data reads version "
                f"{FORMAT_VERSION} (manifests now carry checksums, compactions and tombstones). "
                f"Upgrade it in place with `l2s store migrate --store {backend.url}` (it rewrites the "
                f"manifests only), or extract into a new store."
            )
        return cls(backend)

    @staticmethod
    def migrate(url: str | os.PathLike[str]) -> int:
        """Upgrade an older store in place (see ``ops.migrate``); returns manifests folded."""
        backend = open_backend(url)
        if not backend.exists(MARKER):
            raise StoreNotFoundError(f"no l2s-data store at {backend.url} (no {MARKER} there).")
        return ops.migrate(backend)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @property
    def backend(self) -> Backend:
        """The filesystem access of this store (read-only use outside the store package)."""
        return self._backend

    # -- tables ----------------------------------------------------------------------------------
    def table(self, table_name: str) -> pa.Table:
        """Every committed row of one table (rows may repeat across parts; the SQL views dedupe)."""
        if table_name == "manifests":
            return self.snapshot().rows()
        return self._tables.read(table_name)

    def put_recipe(self, spec: Mapping[str, Any], *, name: str | None = None) -> str:
        """Register a recipe; its id is the sha256 (32 hex) of ``spec``'s canonical JSON.

        Idempotent. ``name`` is an optional alias that :class:`Key` and ``read`` accept in
        place of the id; a name already given to another recipe is refused.
        """
        return self._tables.put_recipe(spec, name=name)

    def recipe_spec(self, recipe: str) -> dict[str, Any]:
        return self._tables.recipe_spec(recipe)

    def resolve_recipe(self, recipe: str, *, must_exist: bool = True) -> str:
        """Recipe id for an id or a registered name (KeyNotFoundError if neither)."""
        return self._tables.resolve_recipe(recipe, must_exist=must_exist)

    def put_samples(self, samples: pa.Table, memberships: pa.Table) -> None:
        """Commit samples and memberships (SAMPLES / MEMBERSHIPS schemas) as content-addressed parts."""
        s = conform(samples, SAMPLES, what="samples")
        m = conform(memberships, MEMBERSHIPS, what="memberships")
        if s.num_rows:
            self._tables.put("samples", s)
        if m.num_rows:
            self._tables.put("memberships", m)

    def put_errors(self, rows: pa.Table | Sequence[Mapping[str, Any]]) -> None:
        """Commit error rows (ERRORS schema; ``created_at`` defaults to now)."""
        self._tables.put_rows("errors", rows)

    def put_runs(self, rows: pa.Table | Sequence[Mapping[str, Any]]) -> None:
        """Commit run rows (RUNS schema; ``created_at`` defaults to now)."""
        self._tables.put_rows("runs", rows)

    def put_extractions(self, rows: pa.Table | Sequence[Mapping[str, Any]]) -> None:
        """Commit extraction-run rows (EXTRACTIONS schema; ``created_at`` defaults to now)."""
        self._tables.put_rows("extractions", rows)

    def put_evaluations(self, rows: pa.Table | Sequence[Mapping[str, Any]]) -> bool:
        """Commit evaluation rows (EVALUATIONS schema; ``created_at`` defaults to now), keyed by
        ``evaluation_id``: False when another process committed these very keys first (its rows
        count). The ``evaluations`` view holds one row per (run, method, alpha, sample)."""
        return self._tables.put_rows("evaluations", rows)

    # -- shards ----------------------------------------------------------------------------------
    def shard_writer(self, shard_id: str, recipe_id: str, sample_ids: Sequence[str], *,
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES, zarr_writer: str | None = None) -> ShardWriter:
        """A new attempt at ``shard_id``; see :class:`~l2s_data.store.writer.ShardWriter`."""
        rid = self.resolve_recipe(recipe_id, must_exist=False)
        registration = self._tables.recipe_rows(rid)

        def on_commit(w: ShardWriter) -> None:
            # A `delete` of this recipe that ran meanwhile must not leave these rows without
            # their recipe: register it again (a no-op when it is still there).
            self._tables.register_again(registration)
            # Bounded: folds loose files once there are many, never the whole store; and it
            # looks for them only now and then (counting them lists the manifests).
            if compaction.due(next(self._commits)):
                compaction.step(self._backend, self.snapshot)

        return ShardWriter(self._backend, shard_id, rid, sample_ids, chunk_bytes=chunk_bytes,
                           zarr_writer=zarr_writer, on_commit=on_commit,
                           settle=lambda: compaction.compact(self._backend, self.snapshot, min_files=1))

    def is_committed(self, shard_id: str) -> bool:
        """Whether a commit of ``shard_id`` counts now (its own manifest or a compacted one,
        tombstones applied: a deleted shard is not committed)."""
        return commit_of(self._backend, shard_id) is not None

    def committed_keys(self, recipe_id: str) -> pa.Table:
        """Columns view, position, layer, sample_id of every committed key of one recipe."""
        return self.snapshot().committed_keys(self.resolve_recipe(recipe_id, must_exist=False))

    def snapshot(self) -> Snapshot:
        """The set of committed manifests now (CorruptManifestError names a damaged one)."""
        return take_snapshot(self._backend, lambda r: self.resolve_recipe(r, must_exist=False))

    # -- SQL and loading -------------------------------------------------------------------------
    def sql(self, query: str, *, params: Sequence[Any] | Mapping[str, Any] | None = None,
            snapshot: Snapshot | None = None, **limits: Any) -> pa.Table:
        """Run one read-only SELECT on the sandboxed catalog; SQLRefusedError for anything else.

        ``params`` binds the statement's ``?`` (a sequence) or ``$name`` (a mapping) parameters,
        so values are never quoted into the text: ``store.sql("SELECT * FROM recipes WHERE
        name = ?", params=["tiny"])``."""
        parse_one(query)  # refuse before paying for a snapshot and a catalog
        with Catalog(self._tables, snapshot or self.snapshot(), **limits) as cat:
            return cat.query(query, params)

    def catalog(self, *, snapshot: Snapshot | None = None, **limits: Any):
        """A sandboxed catalog over one snapshot (a context manager; see ``catalog.Catalog``)."""
        return Catalog(self._tables, snapshot or self.snapshot(), **limits)

    def export_catalog(self, path: str, *, snapshot: Snapshot | None = None, **limits: Any) -> dict[str, int]:
        """Materialise every catalog view as a table in a new DuckDB file; rows per table."""
        return export_catalog(self._tables, snapshot or self.snapshot(), path, **limits)

    def pairs(self, x: Key, y: Key, *, where: str | None = None, batch_size: int = 64,
              shuffle: bool = True, seed: int = 0, **kwargs: Any):
        """Batches ``(x [B, Dx], y [B, Dy])`` float32 of the samples ``where`` selects.

        See :class:`~l2s_data.store.loader.KeyedDataset` for the other options.
        """
        return self.columns((x, y), where=where, batch_size=batch_size, shuffle=shuffle, seed=seed, **kwargs)

    def columns(self, keys: Sequence[Key], *, where: str | None = None, batch_size: int = 64,
                shuffle: bool = True, seed: int = 0, **kwargs: Any):
        """Batches of any tuple of keyed columns; see :class:`~l2s_data.store.loader.KeyedDataset`."""
        from l2s_data.store.loader import KeyedDataset

        return KeyedDataset(self, keys, where=where, batch_size=batch_size, shuffle=shuffle, seed=seed, **kwargs)

    # -- maintenance -----------------------------------------------------------------------------
    def info(self) -> ops.StoreInfo:
        """Recipes, rows, recorded bytes, committed shards and orphans (no chunk file is read)."""
        q = ("SELECT m.recipe_id, any_value(r.name) AS name, "
             "count(DISTINCT (m.view, m.position, m.layer)) AS keys, count(*) AS rows, "
             "count(DISTINCT m.shard) AS shards "
             "FROM manifests m LEFT JOIN recipes r USING (recipe_id) GROUP BY m.recipe_id ORDER BY m.recipe_id")
        return ops.info(self._backend, self.snapshot, lambda snap: self.sql(q, snapshot=snap))

    def verify(self, *, progress=None) -> list[ops.Problem]:
        return ops.verify(self._backend, self.snapshot, progress=progress)

    def gc(self, *, grace_s: float = 3600.0, dry_run: bool = False) -> ops.GcResult:
        return ops.gc(self._backend, self.snapshot, grace_s=grace_s, dry_run=dry_run)

    def maintain(self, *, gc: bool = False, grace_s: float = 3600.0) -> tuple[int, ops.GcResult | None]:
        """Fold every manifest into one part (what an extraction run's end or a cron job calls;
        commits only fold small files), then, with ``gc``, remove crashed and losing attempts
        older than ``grace_s``. Returns (files folded, the gc result or None)."""
        folded, _ = self.compact(min_files=2)
        return folded, self.gc(grace_s=grace_s) if gc else None

    def compact(self, *, min_files: int = 2) -> tuple[int, str | None]:
        """Fold every manifest file and tombstone into one sorted part (``l2s store compact``)."""
        return compaction.compact(self._backend, self.snapshot, min_files=min_files)

    def delete_recipe(self, recipe: str, *, force: bool = False) -> ops.DeleteResult:
        return ops.delete_recipe(self._backend, self._tables, self.snapshot, recipe, force=force)

