"""The rows a training reads: train and validation selections, target scaling, loss weights.

A selection whose bytes fit the config's ``memory_budget`` is read from the store once
(:func:`l2s_data.steer.read_selection`) and every epoch permutes it in memory; a larger one is
streamed from the store each epoch through ``store.pairs`` (chunk-granular, shuffled), with the
per-sample scale and weight looked up by sample id. Validation rows are always read once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from l2s_data.behaviors import TargetScaling
from l2s_data.errors import EmptySelectionError, StoreError
from l2s_data.steer.selection import (
    Selection, open_columns, read_dataset, read_selection, sample_labels, sql_literal,
)
from l2s_data.train.config import TrainConfig

__all__ = ["TrainData", "load_data", "target_scales", "label_weights", "resolve_recipe_id", "resolve_recipe_ids"]


@dataclass
class TrainData:
    """What one training reads. ``train`` is None when the training rows are streamed."""

    train: Selection | None
    val: Selection
    snapshot_id: str
    scales: dict[str, float]                 # category -> target factor (empty: no scaling)
    weights: dict[str | None, float]         # label -> loss weight (empty: unweighted)
    stream: Any = None                       # the store.pairs dataset when streaming
    stream_info: dict[str, Any] = field(default_factory=dict)  # sample_id -> (category, label)

    @property
    def num_train(self) -> int:
        return len(self.train) if self.train is not None else int(self.stream.num_rows)


def resolve_recipe_ids(store, recipes: list[str]) -> list[str]:
    """The recipe id of each id or registered name in ``recipes`` (one catalog query)."""
    lits = ", ".join(sql_literal(r) for r in recipes)
    t = store.sql(f"SELECT DISTINCT recipe_id, name FROM recipes WHERE recipe_id IN ({lits}) OR name IN ({lits})")
    pairs = list(zip(t["recipe_id"].to_pylist(), t["name"].to_pylist()))
    out = []
    for r in recipes:
        ids = {i for i, n in pairs if r in (i, n)}
        if len(ids) != 1:
            raise StoreError(f"recipe {r!r} names {len(ids)} recipes in store {store.url} (expected one); "
                             f"list them with `l2s sql \"SELECT recipe_id, name FROM recipes\"`.")
        out.append(ids.pop())
    return out


def resolve_recipe_id(store, recipe: str) -> str:
    """The recipe id for an id or a registered name (through the catalog)."""
    return resolve_recipe_ids(store, [recipe])[0]


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


def _split_fraction(sel: Selection, fraction: float, seed: int) -> tuple[Selection, Selection]:
    order = sorted(range(len(sel)), key=lambda i: sel.ids[i])
    perm = np.random.default_rng(seed).permutation(len(order))
    n_val = int(round(fraction * len(order)))
    val = np.zeros(len(sel), bool)
    val[[order[i] for i in perm[:n_val]]] = True
    if n_val == 0 or n_val == len(sel):
        raise EmptySelectionError(
            f"split.val_fraction = {fraction} of {len(sel)} training sample(s) leaves "
            f"{'no validation' if n_val == 0 else 'no training'} rows; change val_fraction or set val_where."
        )
    return sel.subset(~val), sel.subset(val)


def load_data(cfg: TrainConfig, store) -> TrainData:
    """Read (or open for streaming) the rows ``cfg`` selects; see the module doc."""
    x, y = cfg.input.key(), cfg.target.key()
    sp = cfg.split
    # One loader opens the training selection: read whole from it when it fits, else stream.
    what = "training selection (split.train_where)"
    probe = open_columns(store, [x, y], sp.train_where, what=what, batch_size=4096, shuffle=False, with_ids=True)
    streamed = cfg.in_memory is False or (cfg.in_memory == "auto" and probe.nbytes > cfg.memory_budget)
    if not streamed:
        for _ in range(3):  # both selections must come from one snapshot
            train = read_dataset(store, probe, [x, y], sp.train_where, what=what)
            if sp.val_where.strip():
                val = read_selection(store, [x, y], sp.val_where, what="validation selection (split.val_where)")
                if val.snapshot_id == train.snapshot_id:
                    break
                probe = open_columns(store, [x, y], sp.train_where, what=what, batch_size=4096, shuffle=False,
                                     with_ids=True)
            else:
                train, val = _split_fraction(train, sp.val_fraction, cfg.seed)
                break
        else:
            raise StoreError(f"store {store.url} kept changing while the training rows were read; retry.")
        scales = target_scales(cfg.target_scaling, train.categories, train.columns[1])
        weights = label_weights(train.labels) if cfg.trainer.balance_labels else {}
        return TrainData(train, val, train.snapshot_id, scales, weights)
    stream = store.pairs(x, y, where=sp.train_where, batch_size=cfg.trainer.batch_size, seed=cfg.seed,
                         with_ids=True, in_memory=False)
    if not sp.val_where.strip():
        raise EmptySelectionError("a streamed training (in_memory = false) needs split.val_where; "
                                  "val_fraction works only for selections read into memory.")
    val = read_selection(store, [x, y], sp.val_where, what="validation selection (split.val_where)")
    info = sample_labels(store, sp.train_where)
    scales: dict[str, float] = {}
    if cfg.target_scaling.method != "none":  # norms of the training targets, one streamed pass
        targets, cats = [], []
        for _, yb, bid in store.pairs(x, y, where=sp.train_where, batch_size=4096, shuffle=False,
                                      with_ids=True, in_memory=False):
            targets.append(yb.numpy())
            cats.extend(info.get(s, (None, None))[0] for s in bid)
        scales = target_scales(cfg.target_scaling, np.array(cats, dtype=object), np.concatenate(targets))
    labels = np.array([lab for _, lab in info.values()], dtype=object)
    weights = label_weights(labels) if cfg.trainer.balance_labels else {}
    return TrainData(None, val, stream.snapshot_id, scales, weights, stream, info)
