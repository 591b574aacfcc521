"""Reading a SQL-selected set of stored rows into memory, once, with each sample's category.

::

    sel = read_selection(store, [x_key, y_key], where="split = 'test'")
    sel.ids            # sample ids, sorted
    sel.columns[1]     # float32 [N, D] of y_key
    sel.categories     # category per row (from memberships)
    sel.snapshot_id    # the store snapshot these rows came from

Goes through the store's loader (``store.columns``) and catalog (``store.sql``) only. A key that
has no rows, or a ``where`` that selects none, raises an error naming it and what exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from l2s_data.errors import EmptySelectionError, KeyNotFoundError
from l2s_data.store import Key

__all__ = ["Selection", "read_selection", "read_dataset", "open_columns", "check_key", "sample_labels", "sql_literal"]


def sql_literal(text: str) -> str:
    """``text`` as a SQL string literal (quotes doubled)."""
    return "'" + str(text).replace("'", "''") + "'"


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
    rec = sql_literal(key.recipe)
    base = (f"FROM manifests m LEFT JOIN recipes r USING (recipe_id) "
            f"WHERE (m.recipe_id = {rec} OR r.name = {rec})")
    layers = store.sql(f"SELECT DISTINCT m.layer {base} AND m.view = {sql_literal(key.view)} "
                       f"AND m.position = {sql_literal(key.position)} ORDER BY 1")["layer"].to_pylist()
    if int(key.layer) in layers:
        return
    if layers:
        raise KeyNotFoundError(
            f"recipe {key.recipe!r} has no layer {key.layer} for view {key.view!r} at position "
            f"{key.position!r}; its stored layers are {layers}. Pick one of them, or extract layer "
            f"{key.layer} (`l2s extract` with that layer in the recipe's layers)."
        )
    have = store.sql(f"SELECT DISTINCT m.view, m.position {base} ORDER BY 1, 2")
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
    clause = "" if where is None else f"WHERE ({where}) "
    t = store.sql("SELECT sample_id, min(category) AS category, min(label) AS label FROM memberships "
                  f"LEFT JOIN samples USING (sample_id) {clause}GROUP BY sample_id")
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
