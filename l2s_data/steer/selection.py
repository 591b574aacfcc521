"""Reading a SQL-selected set of stored rows into memory, once, with each sample's category.

::

    sel = read_selection(store, [x_key, y_key], where="split = 'test'")
    sel.ids            # sample ids, sorted
    sel.columns[1]     # float32 [N, D] of y_key
    sel.categories     # category per row (from memberships)
    sel.snapshot_id    # the store snapshot these rows came from

Goes through the store's loader (``store.columns``) and ``store.sql`` only. A key
that has no rows, or a ``where`` that selects none, raises an error naming it and what exists.
Values reach SQL as parameters (:func:`query`); a user's ``where`` fragment reaches it only
through :func:`where_sql`, after the check the loader applies to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from l2s_data.errors import EmptySelectionError, KeyNotFoundError
from l2s_data.store import Key
from l2s_data.store.sandbox import check_where

__all__ = ["Selection", "read_selection", "read_dataset", "open_columns", "check_key", "sample_labels", "query",
           "where_sql", "in_condition"]


def query(store, sql: str, params: Sequence[object] = ()) -> pa.Table:
    """Every row of one read-only SELECT, its ``?`` placeholders bound to ``params``, on the
    sandboxed catalog of the store's current snapshot."""
    return store.sql(sql, params=list(params))


def where_sql(head: str, where: str | None, tail: str = "") -> str:
    """``head WHERE (where) tail``: a user's selection, spliced only after the same check the
    loader applies to it (one SQL expression; no ``;``, no comment), or ``head tail`` if None."""
    if where is None:
        return f"{head} {tail}".strip()
    return " ".join(part for part in (head, "WHERE (" + check_where(where) + ")", tail) if part)


def in_condition(column: str, values: Sequence[str]) -> str:
    """``column IN ('a', 'b')`` for the loader's ``where``, which takes text and no parameters;
    each value is quoted as a SQL string literal (quotes doubled)."""
    return f"{column} IN (" + ", ".join("'" + str(v).replace("'", "''") + "'" for v in values) + ")"


@dataclass(frozen=True)
class Selection:
    """Rows of some keys for the samples a ``where`` selects, in sample-id order."""

    ids: list[str]
    columns: list[np.ndarray]          # per key: float32 [N, D_k]
    categories: np.ndarray             # object [N]
    labels: np.ndarray                 # object [N] (None where unlabelled)
    snapshot_id: str
    where: str | None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, mask: np.ndarray) -> Selection:
        idx = np.flatnonzero(mask)
        return Selection([self.ids[i] for i in idx], [c[idx] for c in self.columns],
                         self.categories[idx], self.labels[idx], self.snapshot_id, self.where)


def check_key(store, key: Key) -> None:
    """Raise KeyNotFoundError naming what exists if ``key`` has no committed rows."""
    try:
        rid = store.recipe(key.recipe).id
    except KeyNotFoundError:
        rid = key.recipe  # no such recipe: the errors below say what the store holds
    layers = query(store, "SELECT DISTINCT layer FROM manifests WHERE recipe_id = ? AND view = ? AND position = ? "
                   "ORDER BY 1", [rid, key.view, key.position])["layer"].to_pylist()
    if int(key.layer) in layers:
        return
    if layers:
        raise KeyNotFoundError(
            f"recipe {key.recipe!r} has no layer {key.layer} for view {key.view!r} at position "
            f"{key.position!r}; its stored layers are {layers}. Pick one of them, or extract layer "
            f"{key.layer} (`l2s extract` with that layer in the recipe's layers)."
        )
    have = query(store, "SELECT DISTINCT view, position FROM manifests WHERE recipe_id = ? ORDER BY 1, 2", [rid])
    pairs = list(zip(have["view"].to_pylist(), have["position"].to_pylist()))
    if pairs:
        raise KeyNotFoundError(
            f"recipe {key.recipe!r} has no rows for view {key.view!r} at position {key.position!r}; "
            f"it stores (view, position) {pairs}. Fix the key, or extract that view and position."
        )
    raise KeyNotFoundError(
        f"recipe {key.recipe!r} has no committed rows in store {store.url}; list what exists with "
        f"`l2s sql \"SELECT recipe_id, name FROM recipes\"`."
    )


def sample_labels(store, where: str | None) -> dict[str, tuple[str, str | None]]:
    """sample_id -> (category, label) over memberships (the first, if a sample has several)."""
    t = query(store, where_sql("SELECT sample_id, min(category) AS category, min(label) AS label FROM memberships "
                               "LEFT JOIN samples USING (sample_id)", where, "GROUP BY sample_id"))
    return dict(zip(t["sample_id"].to_pylist(), zip(t["category"].to_pylist(), t["label"].to_pylist())))


def _empty(store, keys: Sequence[Key], where: str | None, what: str, detail: str = "") -> EmptySelectionError:
    return EmptySelectionError(
        f"the {what} where = {where!r} selects no sample that has all of the keys "
        f"{[str(k) for k in keys]} in store {store.url}. Check it with `l2s sql \"SELECT split, "
        f"category, count(*) FROM memberships WHERE {where or 'true'} GROUP BY ALL\"`." + detail
    )


def open_columns(store, keys: Sequence[Key], where: str | None, *, what: str = "selection", **kwargs):
    """``store.columns(keys, where=..., **kwargs)``, with errors that name the key or the selection."""
    try:
        ds = store.columns(tuple(keys), where=where, **kwargs)
    except KeyNotFoundError:
        for k in keys:
            check_key(store, k)
        raise
    except EmptySelectionError as exc:
        raise _empty(store, keys, where, what, f" ({exc})") from None
    if ds.num_rows == 0:
        raise _empty(store, keys, where, what)
    return ds


def read_selection(store, keys: Sequence[Key], where: str | None, *, what: str = "selection",
                   batch_size: int = 4096) -> Selection:
    """Read every selected row of ``keys`` once into float32 arrays (see the module doc)."""
    ds = open_columns(store, keys, where, what=what, batch_size=batch_size, shuffle=False, with_ids=True)
    return read_dataset(store, ds, keys, where, what=what)


def read_dataset(store, ds, keys: Sequence[Key], where: str | None, *, what: str = "selection") -> Selection:
    """Every row of an opened ``store.columns(..., with_ids=True)`` dataset, as a :class:`Selection`."""
    if ds.num_rows == 0:
        raise _empty(store, keys, where, what)
    parts: list[list[np.ndarray]] = [[] for _ in keys]
    ids: list[str] = []
    for batch in ds:
        for j in range(len(keys)):
            parts[j].append(batch[j].numpy().astype(np.float32, copy=True))
        ids.extend(batch[-1])
    ds.release()
    labels = sample_labels(store, where)
    cats = np.array([labels.get(s, (None, None))[0] for s in ids], dtype=object)
    labs = np.array([labels.get(s, (None, None))[1] for s in ids], dtype=object)
    order = np.argsort(np.array(ids, dtype=object), kind="stable")  # sample-id order: independent of layout
    return Selection([ids[i] for i in order], [np.concatenate(p)[order] for p in parts], cats[order], labs[order],
                     ds.snapshot_id, where)
