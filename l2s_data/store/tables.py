"""The store's Parquet tables other than manifests: recipes, samples, memberships, errors, runs
and evaluations, each a folder of immutable, content-addressed parts.

A part is created only if absent, so writers never contend and a retried write is a no-op.
Parts may repeat rows (the same samples put twice); the catalog's views deduplicate.

Evaluation rows are keyed: a part of ``evaluations`` is named by the hash of the keys it holds
(its ``evaluation_id`` values, one per run, method, alpha and sample), not by its content. Two
processes that compute the same batch of the same config race for one name, and the first
create wins, as a shard's manifest does; rows of batches cut differently still overlap, and the
``evaluations`` view keeps the first commit of each key.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from l2s_data.errors import KeyNotFoundError, SchemaMismatchError
from l2s_data.memo import Memo
from l2s_data.schemas import RECIPES, TABLES
from l2s_data.store._backend import Backend
from l2s_data.store.contract import (
    PART_TABLES, canonical_json, conform, content_hash, now, parquet_bytes, recipe_id,
    sha256_hex,
)

__all__ = ["StoredRecipe", "Tables"]


#: What tells two versions of one part apart, of what a filesystem's detailed listing gives.
_STAMP = ("size", "mtime", "ino", "ETag", "LastModified", "etag", "updated")

#: The fields of a stamp that change when a part is created again (the size alone may not).
_VERSIONED = frozenset(_STAMP) - {"size"}

#: Tables whose parts are named by the key column's values (see the module docstring).
_KEYED = {"evaluations": "evaluation_id"}


#: Parts already read and conformed, by store, part and stamp. A part is written once, and one
#: created again (a recipe registered after its delete, a keyed evaluations part after its run's
#: delete) has another stamp: a stamp names one version of its bytes. A stamp with no versioned
#: field (a filesystem that lists sizes only) is never kept. Without this, every shard writer
#: parsed every recipe part twice (about 0.8 ms each).
_READ_PARTS = Memo(max_weight=64 << 20, weight=lambda t: t.nbytes)


def _versioned(stamp: tuple[Any, ...]) -> bool:
    return any(v is not None for k, v in zip(_STAMP, stamp) if k in _VERSIONED)


def _recipe_part(rid: str, name: str | None) -> str:
    return rid if name is None else f"{rid}-{sha256_hex(name, 16)}"


@dataclass(frozen=True)
class StoredRecipe:
    """A registered recipe: its id, its spec and the names it was registered under."""

    id: str
    spec: dict[str, Any]
    names: tuple[str, ...] = ()


class Tables:
    """Reads and commits the parts of the store's tables on one backend."""

    def __init__(self, backend: Backend):
        self.backend = backend

    @staticmethod
    def _check(name: str) -> str:
        if name not in PART_TABLES:
            raise KeyError(f"unknown table {name!r}; expected one of {PART_TABLES}.")
        return name

    def files(self, name: str) -> list[str]:
        folder = self._check(name)
        return [f"{folder}/{n}" for n in self.backend.listdir(folder) if n.endswith(".parquet")]

    def stamped_files(self, name: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        """:meth:`files`, each with what tells one version of it from another: its size and
        modification time, and its inode on a local disk (or its ETag on an object store).
        Parts are write-once, but a recipe part that a delete removed and a later registration
        created again has the same name and other bytes. One listing, as :meth:`files`."""
        folder = self._check(name)
        base = self.backend.path(folder)
        try:
            try:
                found = self.backend.fs.ls(base, detail=True, refresh=True)
            except TypeError:  # filesystems without a refresh keyword
                found = self.backend.fs.ls(base, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return ()
        out = []
        for e in found:
            n = posixpath.basename(e["name"].rstrip("/"))
            if n.endswith(".parquet") and not n.startswith(".") and e.get("type") == "file":
                out.append((f"{folder}/{n}", tuple(e.get(k) for k in _STAMP)))
        return tuple(sorted(out))

    def put(self, name: str, table: pa.Table, *, part: str | None = None) -> str:
        """Commit ``table`` (already conformed) as one part; returns its path."""
        rel = f"{self._check(name)}/{part or content_hash(table)}.parquet"
        self.backend.put_if_absent(rel, parquet_bytes(table))
        return rel

    def put_rows(self, name: str, rows: pa.Table | Sequence[Mapping[str, Any]]) -> bool:
        """Conform ``rows`` to the table's schema (``created_at`` defaults to now) and commit
        them. False when a keyed part of these very keys was committed first (nothing written)."""
        schema = TABLES[self._check(name)]
        defaults = {"created_at": now()} if "created_at" in schema.names else None
        t = conform(rows, schema, what=name, defaults=defaults)
        if not t.num_rows:
            return True
        key = _KEYED.get(name)
        if key is None:
            self.put(name, t)
            return True
        keys = t[key].to_pylist()
        if len(set(keys)) != len(keys):
            raise SchemaMismatchError(f"{name}: {key} repeats within one commit, e.g. "
                                      f"{sorted(k for k in set(keys) if keys.count(k) > 1)[:3]}; each key once.")
        rel = f"{name}/k-{sha256_hex(chr(10).join(sorted(keys)))}.parquet"
        return self.backend.put_if_absent(rel, parquet_bytes(t))

    def dataset(self, name: str, files: Sequence[str] | None = None) -> pads.Dataset:
        """A lazily scanned pyarrow dataset over the committed parts of one table (``files``:
        over those parts, as :meth:`files` names them)."""
        files = [self.backend.path(f) for f in (self.files(name) if files is None else files)]
        return pads.dataset(files, schema=TABLES[name], format="parquet", filesystem=self.backend.fs)

    def read(self, name: str) -> pa.Table:
        """Every committed row of one table, each part checked against its schema (a part read
        before, in this process, and not created again since, is not read again)."""
        parts = []
        for f, stamp in self.stamped_files(name):
            try:
                if _versioned(stamp):
                    parts.append(_READ_PARTS.get((self.backend.url, f, stamp), lambda f=f: self._read_part(name, f)))
                else:
                    parts.append(self._read_part(name, f))
            except FileNotFoundError:
                continue  # removed meanwhile (a recipe deleted)
        return pa.concat_tables(parts) if parts else TABLES[name].empty_table()

    def _read_part(self, name: str, rel: str) -> pa.Table:
        raw = pq.read_table(pa.BufferReader(self.backend.read_bytes(rel)))
        # conform, not check_exact: a part written before a nullable column was added reads with
        # that column null (format-1 stores' runs, after `l2s store migrate`).
        return conform(raw.replace_schema_metadata(None), TABLES[name], what=f"{name} part {rel}")

    # -- recipes ---------------------------------------------------------------------------------
    def put_recipe(self, spec: Mapping[str, Any], *, name: str | None = None) -> str:
        """Register a recipe (idempotent); its id is :func:`~l2s_data.store.contract.recipe_id`."""
        if not isinstance(spec, Mapping):
            raise SchemaMismatchError(f"recipe spec must be a dict, got {type(spec).__name__}.")
        text = canonical_json(dict(spec), what="recipe spec")
        rid = recipe_id(spec)
        if name is not None:
            if not isinstance(name, str) or not name.strip() or name != name.strip():
                raise SchemaMismatchError(f"recipe name must be a non-empty string without edge spaces, got {name!r}.")
            t = self.read("recipes")
            ids = set(t.filter(pc.equal(t["name"], name))["recipe_id"].to_pylist()) - {rid}
            if ids:
                raise SchemaMismatchError(
                    f"recipe name {name!r} already names recipe {sorted(ids)[0]}; pick another name."
                )
        row = pa.Table.from_pylist(
            [{"recipe_id": rid, "name": name, "spec_json": text, "created_at": now()}], schema=RECIPES
        )
        self.put("recipes", row, part=_recipe_part(rid, name))
        return rid

    def recipe_rows(self, rid: str) -> pa.Table:
        t = self.read("recipes")
        return t.filter(pc.equal(t["recipe_id"], rid))

    def register_again(self, rows: pa.Table) -> None:
        """Re-create the parts of recipe rows read earlier (no-op for parts still present: one
        look each, so a commit pays no write and no fsync for them)."""
        for row in rows.to_pylist():
            part = _recipe_part(row["recipe_id"], row["name"])
            if not self.backend.exists(f"recipes/{part}.parquet"):
                self.put("recipes", pa.Table.from_pylist([row], schema=RECIPES), part=part)

    def recipe_parts(self, rid: str) -> list[str]:
        return [f for f in self.files("recipes") if f.split("/", 1)[1].startswith(rid)]

    def resolve_recipe(self, recipe: str, *, must_exist: bool = True) -> str:
        """Recipe id for an id or a registered name (KeyNotFoundError if neither)."""
        return self._resolve_in(self.read("recipes"), recipe, must_exist=must_exist)

    def _resolve_in(self, t: pa.Table, recipe: str, *, must_exist: bool) -> str:
        ids = t["recipe_id"].to_pylist()
        if recipe in ids:
            return recipe
        named = {i for i, n in zip(ids, t["name"].to_pylist()) if n == recipe}
        if len(named) == 1:
            return named.pop()
        if not must_exist:
            return recipe
        raise KeyNotFoundError(
            f"recipe {recipe!r} is neither a recipe id nor a name in store {self.backend.url}; "
            f"list them with `l2s sql \"SELECT recipe_id, name FROM recipes\"`."
        )

    def recipe(self, recipe: str) -> StoredRecipe:
        """The recipe with this id or registered name (KeyNotFoundError if neither)."""
        t = self.read("recipes")
        rid = self._resolve_in(t, recipe, must_exist=True)
        mine = t.filter(pc.equal(t["recipe_id"], rid))
        names = tuple(sorted({n for n in mine["name"].to_pylist() if n is not None}))
        return StoredRecipe(rid, json.loads(mine["spec_json"][0].as_py()), names)
