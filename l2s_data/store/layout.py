"""Where a selection's rows live: the frozen value a loader iterates over.

:func:`plan` looks up every key's manifest rows in one snapshot once, and fixes:

- the samples served (those selected that have every key), in the storage order of the first
  key, so that one chunk of the first key's array is a contiguous *unit* of work;
- per key, each sample's (array, row), the arrays' layouts, and the crc32c each chunk must have
  by the manifest's per-row checksums (``_chunks.expected_crcs``);
- per key and unit, how its rows are read: straight into the buffer when they are one whole
  chunk in storage order; through a scratch buffer when they lie in one chunk; else gathered
  chunk by chunk (``_chunks.gather``, the reader ``Snapshot.read`` uses too).

A :class:`Layout` is immutable and pickles (DataLoader workers get a copy); reading it is
``rounds``' business.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from l2s_data.errors import EmptySelectionError, KeyNotFoundError, StoreError
from l2s_data.store._chunks import ArrayInfo, expected_crcs
from l2s_data.store.snapshot import Key, Snapshot

__all__ = ["Layout", "plan"]


@dataclass(frozen=True, eq=False)
class Layout:
    """The rows of ``keys`` for ``sample_ids`` (see the module docstring). Arrays are per key."""

    keys: tuple[Key, ...]
    #: the samples served, position i = sample_ids[i] (storage order of the first key)
    sample_ids: tuple[str, ...]
    #: selected samples left out because they lack a key (``missing="skip"``)
    skipped: int
    #: per key, the arrays it lives in, and per array the crc32c of each chunk's data
    infos: tuple[tuple[ArrayInfo, ...], ...]
    expect: tuple[tuple[np.ndarray, ...], ...]
    #: per key, ``[n, 2]`` (array index, row) of every position
    locs: tuple[np.ndarray, ...]
    #: ``[n_units, 2]`` (start, stop) positions of each unit
    units: np.ndarray
    #: per key, bool ``[n_units]``: the unit's rows are one whole chunk, in order
    whole: tuple[np.ndarray, ...]
    #: per key, bool ``[n_units]``: the unit's rows all lie in one chunk of one array
    one_chunk: tuple[np.ndarray, ...]
    #: per key, per unit the (array, chunk) of its first row
    first_chunk: tuple[tuple[tuple[int, int], ...], ...]
    #: per key, per position its row within its chunk
    in_chunk: tuple[np.ndarray, ...]

    @property
    def num_rows(self) -> int:
        return len(self.sample_ids)

    @property
    def dims(self) -> list[int]:
        return [infos[0].dim for infos in self.infos]

    @property
    def shapes(self) -> list[tuple[int, np.dtype]]:
        """Per key, (width, stored dtype) of its rows."""
        return [(infos[0].dim, infos[0].stored_dtype) for infos in self.infos]

    @property
    def nbytes(self) -> int:
        return self.num_rows * sum(d * dt.itemsize for d, dt in self.shapes)

    def unit_rows(self, units: np.ndarray) -> np.ndarray:
        return self.units[units, 1] - self.units[units, 0]

    def positions(self, units: np.ndarray) -> np.ndarray:
        """The sample positions of ``units``' rows, unit after unit."""
        starts, sizes = self.units[units, 0], self.unit_rows(units)
        return np.repeat(starts - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())


def plan(snap: Snapshot, keys: Sequence[Key], selected: Sequence[str] | None, *, missing: str,
         what: str, url: str) -> Layout:
    """The layout of ``keys`` for the ``selected`` samples (None: every sample of the first key)
    in ``snap``. ``missing="error"`` refuses a selected sample lacking a key; ``"skip"`` leaves
    it out. ``what`` names the selection in errors; ``url`` the store."""
    keys = tuple(keys)
    tables = [snap.key_rows(k.recipe, k.view, k.position, k.layer) for k in keys]
    for k, t in zip(keys, tables):
        if t.num_rows == 0:
            raise KeyNotFoundError(
                f"key {k} has no committed rows in snapshot {snap.id} of {url}; check it "
                f"with `l2s sql \"SELECT DISTINCT recipe_id, view, position, layer FROM manifests\"`."
            )
    base = pc.unique(tables[0]["sample_id"].combine_chunks()) if selected is None \
        else pa.array(sorted(selected), pa.string())
    base = base.take(pc.array_sort_indices(base))
    hits = [pc.index_in(base, value_set=t["sample_id"].combine_chunks()) for t in tables]
    ok = np.ones(len(base), bool)
    for h in hits:
        ok &= h.is_valid().to_numpy(zero_copy_only=False)
    if not ok.all() and missing == "error":
        lost = base.filter(pa.array(~ok)).to_pylist()
        raise KeyNotFoundError(
            f"{len(lost)} of {len(base)} selected sample(s) lack one of the keys "
            f"{[str(k) for k in keys]}, e.g. {lost[:3]}. Extract them, narrow `where`, or pass "
            f"missing='skip'."
        )
    have = base.filter(pa.array(ok))
    skipped = len(base) - len(have)
    if len(have) == 0:
        raise EmptySelectionError(
            f"{what} selects no sample having all of the keys {[str(k) for k in keys]} in "
            f"snapshot {snap.id} of {url} ({skipped} selected sample(s) lack a key). "
            f"Check the selection with `l2s sql \"SELECT count(*) FROM memberships LEFT JOIN "
            f"samples USING (sample_id) WHERE ...\"`, or extract the keys first."
        )
    all_infos, expect, locs = [], [], []
    for k, t, h in zip(keys, tables, hits):
        at = h.filter(pa.array(ok))
        arrays, rows = t["array"].take(at), t["row"].take(at)
        paths = pc.unique(arrays.combine_chunks())
        paths = paths.take(pc.array_sort_indices(paths))
        infos = tuple(snap.array_info(p) for p in paths.to_pylist())
        if len({(i.dim, i.logical_dtype) for i in infos}) > 1:
            raise StoreError(
                f"key {k} is stored with different widths or dtypes in "
                f"{', '.join(f'{i.path} ({i.dim} x {i.logical_dtype})' for i in infos[:4])}; its "
                f"rows cannot form one column. Delete and re-extract the odd shards."
            )
        all_infos.append(infos)
        expect.append(tuple(expected_crcs(t, infos)))
        which = pc.index_in(arrays, value_set=paths).to_numpy(zero_copy_only=False)
        locs.append(np.stack([which.astype(np.int64), rows.to_numpy().astype(np.int64)], axis=1))
    # Storage order of the first key, so a unit (one chunk of key 0) is contiguous.
    l0 = locs[0]
    c0 = np.array([i.chunk_rows for i in all_infos[0]], np.int64)[l0[:, 0]]
    order = np.lexsort((l0[:, 1], l0[:, 1] // c0, l0[:, 0]))
    locs = [loc[order] for loc in locs]
    l0, c0 = locs[0], c0[order]
    unit_key = l0[:, 0] * (1 << 32) + l0[:, 1] // c0
    starts = np.flatnonzero(np.r_[True, unit_key[1:] != unit_key[:-1]])
    units = np.stack([starts, np.r_[starts[1:], len(have)]], axis=1)
    chunk_rows = [np.array([i.chunk_rows for i in infos], np.int64)[loc[:, 0]] for infos, loc in zip(all_infos, locs)]
    return Layout(
        keys=keys, sample_ids=tuple(have.take(pa.array(order)).to_pylist()), skipped=skipped,
        infos=tuple(all_infos), expect=tuple(expect), locs=tuple(locs), units=units,
        whole=tuple(_whole_chunks(units, loc, infos, c) for loc, infos, c in zip(locs, all_infos, chunk_rows)),
        one_chunk=tuple(_in_one_chunk(units, loc, c) for loc, c in zip(locs, chunk_rows)),
        first_chunk=tuple(tuple(zip(loc[units[:, 0], 0].tolist(), (loc[units[:, 0], 1] // c[units[:, 0]]).tolist()))
                          for loc, c in zip(locs, chunk_rows)),
        in_chunk=tuple(loc[:, 1] % c for loc, c in zip(locs, chunk_rows)),
    )


def _whole_chunks(units: np.ndarray, loc: np.ndarray, infos: Sequence[ArrayInfo], chunk_rows: np.ndarray) -> np.ndarray:
    """bool ``[n_units]``: each unit's rows of this key are exactly one whole chunk, in order."""
    rows = np.array([i.rows for i in infos], np.int64)[loc[:, 0]]
    follows = (loc[1:, 0] == loc[:-1, 0]) & (loc[1:, 1] == loc[:-1, 1] + 1)  # row i+1 after row i
    breaks = np.r_[0, np.cumsum(~follows)]
    s, e = units[:, 0], units[:, 1]
    r0, c = loc[s, 1], chunk_rows[s]
    return (breaks[e - 1] - breaks[s] == 0) & (r0 % c == 0) & (e - s == np.minimum(c, rows[s] - r0))


def _in_one_chunk(units: np.ndarray, loc: np.ndarray, chunk_rows: np.ndarray) -> np.ndarray:
    """bool ``[n_units]``: each unit's rows of this key all lie in one chunk of one array."""
    chunk = loc[:, 1] // chunk_rows
    same = (loc[1:, 0] == loc[:-1, 0]) & (chunk[1:] == chunk[:-1])
    breaks = np.r_[0, np.cumsum(~same)]
    return breaks[units[:, 1] - 1] == breaks[units[:, 0]]
