"""The activation store: a folder at a URL holding Zarr shard attempts and committed Parquet.

``Store`` is a facade of five verbs, and nothing else (the store guide's table of them is
checked against this class by ``tests/store/test_facade.py``)::

    store = Store.open("runs/store", create=True)                  # open (or "s3://bucket/store")
    rid = store.put_recipe({"model": "...", "layers": [14]}, name="llava-safety")   # write
    store.put("samples", samples, memberships=memberships)
    with store.shard_writer("s-0", rid, ids) as w:
        w.write("p2s", "completion_last", 14, v, "float32")      # [len(ids), D]
    store.sql("SELECT view, count(*) FROM manifests GROUP BY view")   # sql (also catalog())
    x = store.snapshot().read(rid, "p2s", "completion_last", 14, ids)  # read / stream
    ds = store.columns((x_key, y_key), where="split = 'train'")
    store.maintain(gc=True)                                          # maintain
    store.admin.verify()                                             # info, gc, compact, ...

It opens the backend and composes the layers below it (tables, snapshots, the writer, the
catalog, the loader and ``admin``), each of which gets what it needs as arguments. See DESIGN.md
section 4 for the invariants.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from l2s_data.errors import (
    KeyNotFoundError, L2SError, SchemaMismatchError, StoreAccessError, StoreError, StoreNotFoundError,
)
from l2s_data.schemas import FORMAT_VERSION, MEMBERSHIPS, SAMPLES
from l2s_data.store import compaction, ops
from l2s_data.store._backend import Backend, open_backend
from l2s_data.store.admin import Admin
from l2s_data.store.catalog import Catalog
from l2s_data.store.contract import MARKER, conform, now
from l2s_data.store.sandbox import parse_one
from l2s_data.store.snapshot import Key, Snapshot, take_snapshot
from l2s_data.store.tables import StoredRecipe, Tables
from l2s_data.store.writer import DEFAULT_CHUNK_BYTES, ShardWriter

if TYPE_CHECKING:
    from l2s_data.store.loader import KeyedDataset

__all__ = ["Store"]

#: The tables :meth:`Store.put` commits rows to (recipes and manifests have their own verbs).
_PUT_TABLES = ("samples", "memberships", "errors", "runs", "extractions", "evaluations")


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
        self._url: str = backend.url
        self._commits = itertools.count()  # this process's commits through this store
        #: info, verify, gc, compact, delete_recipe, export_catalog, migrate (``l2s store ...``)
        self.admin = Admin(backend, self._tables, self.snapshot)

    @property
    def url(self) -> str:
        """The store's URL, as opened."""
        return self._url

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

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- write ---------------------------------------------------------------------------------
    def put_recipe(self, spec: Mapping[str, Any], *, name: str | None = None) -> str:
        """Register a recipe; its id is the sha256 (32 hex) of ``spec``'s canonical JSON.

        Idempotent. ``name`` is an optional alias that :class:`Key` and ``read`` accept in
        place of the id; a name already given to another recipe is refused.
        """
        return self._tables.put_recipe(spec, name=name)

    def put(self, table: str, rows: pa.Table | Sequence[Mapping[str, Any]], *,
            memberships: pa.Table | Sequence[Mapping[str, Any]] | None = None) -> bool:
        """Commit rows of one table (its schema in ``l2s_data.schemas``; ``created_at`` defaults
        to now) as one immutable part, named by its content (``evaluations``: by its keys):
        ``samples`` (with their ``memberships=``, both checked before either is written),
        ``memberships``, ``errors``, ``runs``, ``extractions`` or ``evaluations``. Recipes go through :meth:`put_recipe`, activations through
        :meth:`shard_writer`.

        Returns False only for ``evaluations`` whose very keys (``evaluation_id``) another
        process committed first (its rows count; nothing is written), else True. The views
        deduplicate: ``evaluations`` keeps one row per (run, method, alpha, sample)."""
        if table not in _PUT_TABLES:
            raise KeyNotFoundError(
                f"store.put takes one of the tables {sorted(_PUT_TABLES)}, got {table!r}"
                + ("; register a recipe with store.put_recipe(spec, name=...)." if table == "recipes" else
                   "; activations are written with store.shard_writer(...)." if table == "manifests" else ".")
            )
        if memberships is not None and table != "samples":
            raise SchemaMismatchError(
                f"memberships= goes with the samples they belong to: store.put('samples', samples, "
                f"memberships=...), or store.put('memberships', rows); got it with {table!r}."
            )
        if table == "samples" and memberships is not None:
            s = conform(rows, SAMPLES, what="samples")
            m = conform(memberships, MEMBERSHIPS, what="memberships")
            self._tables.put_rows("samples", s)
            return self._tables.put_rows("memberships", m)
        return self._tables.put_rows(table, rows)

    # -- shards ----------------------------------------------------------------------------------
    def shard_writer(self, shard_id: str, recipe_id: str, sample_ids: Sequence[str], *,
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES, zarr_writer: str | None = None) -> ShardWriter:
        """A new attempt at ``shard_id``; see :class:`~l2s_data.store.writer.ShardWriter`."""
        rid = self._tables.resolve_recipe(recipe_id, must_exist=False)
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

    # -- sql -------------------------------------------------------------------------------------
    def sql(self, query: str, *, params: Sequence[Any] | Mapping[str, Any] | None = None,
            snapshot: Snapshot | None = None, **limits: Any) -> pa.Table:
        """Run one read-only SELECT on the sandboxed catalog; SQLRefusedError for anything else.

        ``params`` binds the statement's ``?`` (a sequence) or ``$name`` (a mapping) parameters,
        so values are never quoted into the text: ``store.sql("SELECT * FROM recipes WHERE
        name = ?", params=["tiny"])``."""
        parse_one(query)  # refuse before paying for a snapshot and a catalog
        with self.catalog(snapshot=snapshot, **limits) as cat:
            return cat.query(query, params)

    def catalog(self, *, snapshot: Snapshot | None = None, **limits: Any) -> Catalog:
        """A sandboxed catalog over one snapshot (a context manager; see ``catalog.Catalog``).
        Its connection is reused from an earlier catalog of this process over exactly the same
        committed files and limits, if one is idle (``catalog_pool``), and built otherwise."""
        return Catalog(self._tables, snapshot or self.snapshot(), reuse=True, **limits)

    # -- read / stream ---------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The set of committed manifests now, and reads by key: ``read``, ``committed_keys``
        (CorruptManifestError names a damaged manifest)."""
        return take_snapshot(self._backend, lambda r: self._tables.resolve_recipe(r, must_exist=False))

    def recipe(self, recipe: str) -> StoredRecipe:
        """The recipe with this id or registered name: ``.id``, ``.spec``, ``.names``
        (KeyNotFoundError naming how to list them if neither)."""
        return self._tables.recipe(recipe)

    def columns(self, keys: Sequence[Key], *, where: str | None = None, batch_size: int = 64,
                shuffle: bool = True, seed: int = 0, **kwargs: Any) -> KeyedDataset:
        """Batches ``(col_0 [B, D_0], ..., col_k [B, D_k])`` float32 of the samples ``where``
        selects, one column per key: ``store.columns((x_key, y_key))`` yields ``(x, y)`` pairs.
        See :class:`~l2s_data.store.loader.KeyedDataset` for the other options."""
        # Not at the top: the loader imports torch, which more than doubles the start-up of every
        # `l2s sql` / `l2s store` call (measured: +2.1-4.8 s on top of 1.0-2.8 s, 2 loaded cores).
        from l2s_data.store.loader import KeyedDataset

        return KeyedDataset(self, keys, where=where, batch_size=batch_size, shuffle=shuffle, seed=seed, **kwargs)

    # -- maintain --------------------------------------------------------------------------------
    def maintain(self, *, gc: bool = False, grace_s: float = 3600.0) -> tuple[int, ops.GcResult | None]:
        """Fold every manifest into one part (for a pipeline to call after its extraction runs,
        or a cron job: no run calls it, since commits fold small files as they go and a whole
        fold rewrites every row), then, with ``gc``, remove crashed and losing attempts
        older than ``grace_s``. Returns (files folded, the gc result or None). The other
        operations on a whole store are on :attr:`admin`."""
        folded, _ = self.admin.compact(min_files=2)
        return folded, self.admin.gc(grace_s=grace_s) if gc else None
