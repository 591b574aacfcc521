"""The rows a training reads: train and validation selections, target scaling, loss weights.

A selection whose bytes fit the config's ``memory_budget`` is read from the store once
(:func:`l2s_data.steer.read_selection`) and every epoch permutes it in memory; a larger one is
streamed from the store each epoch through ``store.pairs`` (chunk-granular, shuffled), with the
per-sample scale and weight looked up by sample id. Validation rows are always read once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from l2s_data.behaviors import TargetScaling
from l2s_data.datasets.splits import hash_share
from l2s_data.errors import ConfigError, EmptySelectionError, StoreError
from l2s_data.steer.selection import (
    Selection, in_condition, open_columns, query, read_dataset, read_selection, sample_labels, where_sql,
)
from l2s_data.store import Key
from l2s_data.train.config import TrainConfig

__all__ = ["TrainData", "load_data", "target_scales", "label_weights", "test_overlap"]


@dataclass
class TrainData:
    """What one training reads. ``train`` is None when the training rows are streamed."""

    train: Selection | None
    val: Selection
    snapshot_id: str
    scales: dict[str, float]                 # category -> target factor (empty: no scaling)
    # label -> its weight if the whole split were balanced at once (empty: balance_labels off);
    # for the record: the loss balances every batch (l2s_data.train.trainer.batch_weights)
    weights: dict[str | None, float]
    stream: Any = None                       # the store.pairs dataset when streaming
    stream_info: dict[str, Any] = field(default_factory=dict)  # sample_id -> (category, label)
    val_overlaps_test: int = 0               # validation samples that are test rows (only if allowed)
    exclude: frozenset = frozenset()         # streamed: training-split rows that validate, skipped

    def stream_batches(self, epoch: int | None = None):
        """The streamed training batches ``(x, y, ids)``, the validation rows left out."""
        if epoch is not None:
            self.stream.set_epoch(epoch)
        for xb, yb, ids in self.stream:
            if self.exclude:
                keep = [i for i, s in enumerate(ids) if s not in self.exclude]
                if not keep:
                    continue
                if len(keep) < len(ids):
                    xb, yb, ids = xb[keep], yb[keep], [ids[i] for i in keep]
            yield xb, yb, ids

    @property
    def num_train(self) -> int:
        return len(self.train) if self.train is not None else int(self.stream.num_rows) - len(self.exclude)


def target_scales(spec: TargetScaling, categories: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """category -> factor so each group's training vectors have the reference group's mean norm."""
    if spec.method == "none":
        return {}
    norms = np.linalg.norm(np.asarray(targets, np.float64), axis=1)
    group_of = {c: g for g, cats in spec.groups.items() for c in cats}
    means = {}
    for g in spec.groups:
        m = np.array([group_of.get(c) == g for c in categories])
        if m.any():
            means[g] = float(norms[m].mean())
    ref = spec.reference_group
    if ref not in means:
        raise EmptySelectionError(
            f"target_scaling: the reference group {ref!r} (categories {spec.groups.get(ref)}) has no "
            f"training rows; the training categories are {sorted(set(categories.tolist()))}."
        )
    return {c: means[ref] / means[g] for c, g in group_of.items() if g in means}


def label_weights(labels: np.ndarray) -> dict[str | None, float]:
    """label -> weight so every label's rows weigh the same in total (mean weight 1)."""
    values, counts = np.unique(np.array([str(x) for x in labels]), return_counts=True)
    n, k = len(labels), len(values)
    return {v: n / (k * c) for v, c in zip(values.tolist(), counts.tolist())}


def _natural(text: Any) -> tuple:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", str(text)))


def _split_fraction(store, sel: Selection, sp) -> tuple[Selection, Selection]:
    if sp.val_rule == "hash_share":
        val = np.array([hash_share(s, sp.val_fraction) for s in sel.ids], bool)
    else:  # last_share: the last val_fraction of the training samples in question order
        qids = _question_ids(store, sp.train_where)
        order = sorted(range(len(sel)), key=lambda i: (_natural(qids.get(sel.ids[i], "")), sel.ids[i]))
        n_val = int(round(sp.val_fraction * len(order)))
        val = np.zeros(len(sel), bool)
        val[order[len(order) - n_val:] if n_val else []] = True
    n_val = int(val.sum())
    if n_val == 0 or n_val == len(sel):
        raise EmptySelectionError(
            f"split.val_fraction = {sp.val_fraction} ({sp.val_rule}) of {len(sel)} training sample(s) leaves "
            f"{'no validation' if n_val == 0 else 'no training'} rows; change val_fraction or set val_where."
        )
    return sel.subset(~val), sel.subset(val)


def _question_ids(store, where: str) -> dict[str, str]:
    t = query(store, where_sql("SELECT sample_id, min(question_id) AS q FROM memberships "
                               "LEFT JOIN samples USING (sample_id)", where, "GROUP BY sample_id"))
    return dict(zip(t["sample_id"].to_pylist(), t["q"].to_pylist()))


def test_overlap(store, ids: list[str], test_where: str) -> list[str]:
    """The sample ids among ``ids`` that ``test_where`` selects (rows a report shows as test)."""
    if not test_where.strip() or not ids:
        return []
    with store.catalog() as cat:
        test = set(cat.select_sample_ids(test_where))
    return sorted(s for s in ids if s in test)


def _check_overlap(store, cfg: TrainConfig, val: Selection) -> int:
    sp = cfg.split
    both = test_overlap(store, val.ids, sp.test_where)
    if both and not sp.validate_on_test:
        raise ConfigError(
            f"{len(both)} of the {len(val)} validation sample(s) are test rows (split.test_where = "
            f"{sp.test_where!r}), e.g. {both[:3]}: best-epoch and sweep selection would see rows that "
            f"evaluation reports as test. Validate on training rows (leave split.val_where empty for a "
            f"share of them), or set split.validate_on_test = true to allow it (the run and its reports "
            f"then say so)."
        )
    return len(both)


def _read(store, cfg: TrainConfig, where: str, *, what: str, probe=None) -> Selection:
    """The selection of (h_X, v_X) rows, each category's target read at its own position."""
    x = cfg.input.key()
    groups = cfg.target.keys_by_position()
    if len(groups) == 1:
        y = cfg.target.key()
        if probe is not None:
            return read_dataset(store, probe, [x, y], where, what=what)
        return read_selection(store, [x, y], where, what=what)
    overridden = sorted(c for cats in groups.values() if cats for c in cats)
    parts = []
    for pos, cats in groups.items():
        y = Key(cfg.target.recipe, cfg.target.view, pos, cfg.target.layer)
        inside = in_condition("category", cats or overridden)
        clause = inside if cats else f"NOT coalesce({inside}, false)"
        sub = f"({where}) AND {clause}"
        try:
            parts.append(read_selection(store, [x, y], sub, what=f"{what}, position {pos}"))
        except EmptySelectionError:
            continue
    if not parts:
        return read_selection(store, [x, cfg.target.key()], where, what=what)  # raises, naming the selection
    if len({p.snapshot_id for p in parts}) != 1:
        raise StoreError(f"store {store.url} changed while the {what} was read by position; retry.")
    ids = [i for p in parts for i in p.ids]
    order = np.argsort(np.array(ids, dtype=object), kind="stable")
    cols = [np.concatenate([p.columns[j] for p in parts])[order] for j in range(2)]
    cats = np.concatenate([p.categories for p in parts])[order]
    labs = np.concatenate([p.labels for p in parts])[order]
    return Selection([ids[i] for i in order], cols, cats, labs, parts[0].snapshot_id, where)


def load_data(cfg: TrainConfig, store) -> TrainData:
    """Read (or open for streaming) the rows ``cfg`` selects; see the module doc."""
    x, y = cfg.input.key(), cfg.target.key()
    sp = cfg.split
    overrides = len(cfg.target.keys_by_position()) > 1
    # One loader opens the training selection: read whole from it when it fits, else stream.
    what = "training selection (split.train_where)"
    vwhat = "validation selection (split.val_where)"
    probe = open_columns(store, [x, y], sp.train_where, what=what, batch_size=4096, shuffle=False, with_ids=True)
    streamed = cfg.in_memory is False or (cfg.in_memory == "auto" and probe.nbytes > cfg.memory_budget)
    if streamed and overrides:
        raise ConfigError("target.position_overrides reads categories at several positions, which a streamed "
                          "training (in_memory = false, or a selection over memory_budget) does not do; set "
                          "in_memory = true or raise memory_budget.")
    if not streamed:
        for _ in range(3):  # both selections must come from one snapshot
            train = _read(store, cfg, sp.train_where, what=what, probe=None if overrides else probe)
            if sp.val_where.strip():
                val = _read(store, cfg, sp.val_where, what=vwhat)
                if val.snapshot_id == train.snapshot_id:
                    break
                probe = open_columns(store, [x, y], sp.train_where, what=what, batch_size=4096, shuffle=False,
                                     with_ids=True)
            else:
                train, val = _split_fraction(store, train, sp)
                break
        else:
            raise StoreError(f"store {store.url} kept changing while the training rows were read; retry.")
        overlap = _check_overlap(store, cfg, val)
        scales = target_scales(cfg.target_scaling, train.categories, train.columns[1])
        weights = label_weights(train.labels) if cfg.trainer.balance_labels else {}
        return TrainData(train, val, train.snapshot_id, scales, weights, val_overlaps_test=overlap)
    stream = store.columns((x, y), where=sp.train_where, batch_size=cfg.trainer.batch_size, seed=cfg.seed,
                           with_ids=True, in_memory=False)
    info = sample_labels(store, sp.train_where)
    exclude: frozenset[str] = frozenset()
    if sp.val_where.strip():
        val = read_selection(store, [x, y], sp.val_where, what=vwhat)
    else:  # a share of the training rows validates: read those once, skip them in the stream
        ids = sorted(info)
        if sp.val_rule == "hash_share":
            chosen = [s for s in ids if hash_share(s, sp.val_fraction)]
        else:
            qids = _question_ids(store, sp.train_where)
            order = sorted(ids, key=lambda s: (_natural(qids.get(s, "")), s))
            chosen = order[len(order) - int(round(sp.val_fraction * len(order))):] if sp.val_fraction else []
        if not chosen or len(chosen) == len(ids):
            raise EmptySelectionError(
                f"split.val_fraction = {sp.val_fraction} ({sp.val_rule}) of {len(ids)} training sample(s) leaves "
                f"{'no validation' if not chosen else 'no training'} rows; change val_fraction or set val_where.")
        val = read_selection(store, [x, y], f"({sp.train_where}) AND {in_condition('sample_id', chosen)}", what=vwhat)
        exclude = frozenset(chosen)
        info = {s: v for s, v in info.items() if s not in exclude}
    overlap = _check_overlap(store, cfg, val)
    scales: dict[str, float] = {}
    if cfg.target_scaling.method != "none":  # norms of the training targets, one streamed pass
        targets, cats = [], []
        for _, yb, bid in store.columns((x, y), where=sp.train_where, batch_size=4096, shuffle=False,
                                        with_ids=True, in_memory=False):
            keep = [i for i, s in enumerate(bid) if s not in exclude]
            targets.append(yb.numpy()[keep])
            cats.extend(info.get(bid[i], (None, None))[0] for i in keep)
        scales = target_scales(cfg.target_scaling, np.array(cats, dtype=object), np.concatenate(targets))
    labels = np.array([lab for _, lab in info.values()], dtype=object)
    weights = label_weights(labels) if cfg.trainer.balance_labels else {}
    return TrainData(None, val, stream.snapshot_id, scales, weights, stream, info, overlap, exclude)
