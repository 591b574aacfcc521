"""Administration of a whole store: what ``l2s store ...`` and ``l2s catalog export`` run.

``store.admin`` is an :class:`Admin` holding the store's backend, its tables and a function that
takes a fresh snapshot; nothing else. Its operations (in ``ops``, ``compaction`` and ``export``)
are safe alongside running writers and readers; see the store guide::

    store.admin.info()                     # recipes, rows, recorded bytes, orphans
    store.admin.verify()                   # every chunk and row against its checksums
    store.admin.gc(grace_s=3600)           # crashed and losing attempts
    store.admin.compact()                  # every manifest folded into one part
    store.admin.delete_recipe("tiny")      # refused while runs reference it
    store.admin.export_catalog("c.duckdb") # the catalog's views as a DuckDB file
    Admin.migrate("old-store")             # a format-1 store upgraded in place

``store.maintain()`` is the one of these that a pipeline calls (compact, then gc if asked).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from l2s_data.errors import StoreNotFoundError
from l2s_data.store import compaction, ops
from l2s_data.store._backend import Backend, open_backend
from l2s_data.store.catalog import Catalog
from l2s_data.store.contract import MARKER
from l2s_data.store.export import export_catalog
from l2s_data.store.snapshot import Snapshot
from l2s_data.store.tables import Tables

__all__ = ["Admin"]

#: What ``info`` lists per recipe.
_RECIPES_SQL = (
    "SELECT m.recipe_id, any_value(r.name) AS name, "
    "count(DISTINCT (m.view, m.position, m.layer)) AS keys, count(*) AS rows, "
    "count(DISTINCT m.shard) AS shards "
    "FROM manifests m LEFT JOIN recipes r USING (recipe_id) GROUP BY m.recipe_id ORDER BY m.recipe_id"
)


class Admin:
    """The maintenance and inspection operations of one store (``store.admin``)."""

    def __init__(self, backend: Backend, tables: Tables, take: Callable[[], Snapshot]):
        #: bytes on the store's filesystem: for inspection and tests, never for reading rows
        self.backend = backend
        self._tables = tables
        self._take = take

    def __repr__(self) -> str:
        return f"Admin({self.backend.url!r})"

    def info(self) -> ops.StoreInfo:
        """Recipes, rows, recorded bytes, committed shards and orphans (no chunk file is read)."""
        def recipes(snap: Snapshot):
            with Catalog(self._tables, snap) as cat:
                return cat.query(_RECIPES_SQL)

        return ops.info(self.backend, self._take, recipes)

    def verify(self, *, progress: Callable[[int, int], Any] | None = None) -> list[ops.Problem]:
        """Re-read every committed chunk and row against its checksums; [] when intact."""
        return ops.verify(self.backend, self._take, progress=progress)

    def gc(self, *, grace_s: float = 3600.0, dry_run: bool = False) -> ops.GcResult:
        """Remove crashed and losing attempts (uncommitted ones once ``grace_s`` old)."""
        return ops.gc(self.backend, self._take, grace_s=grace_s, dry_run=dry_run)

    def compact(self, *, min_files: int = 2) -> tuple[int, str | None]:
        """Fold every manifest file and tombstone into one sorted part; (files folded, its name)."""
        return compaction.compact(self.backend, self._take, min_files=min_files)

    def delete_recipe(self, recipe: str, *, force: bool = False) -> ops.DeleteResult:
        """Uncommit and remove every row of a recipe; refused while runs reference it unless ``force``."""
        return ops.delete_recipe(self.backend, self._tables, self._take, recipe, force=force)

    def export_catalog(self, path: str, *, snapshot: Snapshot | None = None, **limits: Any) -> dict[str, int]:
        """Materialise every catalog view as a table in a new DuckDB file; rows per table."""
        return export_catalog(self._tables, snapshot or self._take(), path, **limits)

    @staticmethod
    def migrate(url: str | os.PathLike[str]) -> int:
        """Upgrade an older store in place (``Store.open`` refuses one); returns manifests folded."""
        backend = open_backend(url)
        if not backend.exists(MARKER):
            raise StoreNotFoundError(f"no l2s-data store at {backend.url} (no {MARKER} there).")
        return ops.migrate(backend)
