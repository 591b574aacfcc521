"""Baseline steering vectors from the cache (DESIGN.md section 1): Mean-S, Mean-S(BA), Norm-Rnd, P2S*.

::

    v = mean_s(store, Key("demo-pair", "p2s", "completion_last", 2), where="split = 'train'")   # [D]
    v_ba = mean_s_ba(store, Key("agnostic-pair", "p2s", "completion_last", 2), where="split = 'train'")
    ids, V = norm_rnd(store, key, where="split = 'test'", seed=0)   # [N, D]: random, ||V_i|| = ||v_i||
    ids, V = p2s_star(store, key, where="split = 'test'")           # [N, D]: the oracle v_X

- **Mean-S**: the mean of the training P2S vectors.
- **Mean-S(BA)**: the same mean over P2S vectors of a behaviour-agnostic pair (one pair,
  "Harmful" / "Safe", for every category): pass the key of the recipe extracted with it.
- **Norm-Rnd**: per sample, a uniformly random direction scaled to that sample's P2S norm; the
  direction depends only on (seed, sample id), so it does not change with the selection.
- **P2S***: the test sample's own P2S vector (an oracle upper bound).

The array forms (``*_of``) compute the same from rows already in memory.
"""

from __future__ import annotations

import hashlib

import numpy as np

from l2s_data.steer.selection import read_selection
from l2s_data.store import Key

__all__ = ["BASELINES", "mean_s", "mean_s_ba", "norm_rnd", "p2s_star", "mean_of", "norm_rnd_of"]

BASELINES = ("mean_s", "mean_s_ba", "norm_rnd", "p2s_star")


def mean_of(targets: np.ndarray) -> np.ndarray:
    """float32 ``[D]``: the mean of ``targets [N, D]``, summed in float64."""
    return np.asarray(targets, np.float64).mean(axis=0).astype(np.float32)


def _direction(seed: int, sample_id: str, dim: int) -> np.ndarray:
    h = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "little")
    d = np.random.default_rng([int(seed), h]).standard_normal(dim)
    return d / np.linalg.norm(d)


def norm_rnd_of(ids: list[str], targets: np.ndarray, seed: int = 0) -> np.ndarray:
    """float32 ``[N, D]``: row i a random unit direction (seed, ids[i]) times ``||targets[i]||``."""
    t = np.asarray(targets, np.float64)
    norms = np.linalg.norm(t, axis=1)
    out = np.stack([_direction(seed, s, t.shape[1]) for s in ids]) if ids else np.zeros((0, t.shape[1]))
    return (out * norms[:, None]).astype(np.float32)


def mean_s(store, key: Key, where: str | None) -> np.ndarray:
    """Mean-S: the mean P2S vector of ``key`` over the samples ``where`` selects (training rows)."""
    return mean_of(read_selection(store, [key], where, what="Mean-S selection").columns[0])


def mean_s_ba(store, agnostic_key: Key, where: str | None) -> np.ndarray:
    """Mean-S(BA): the mean P2S vector of a behaviour-agnostic recipe's key over ``where``."""
    return mean_of(read_selection(store, [agnostic_key], where, what="Mean-S(BA) selection").columns[0])


def norm_rnd(store, key: Key, where: str | None, *, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Norm-Rnd for every selected sample: (sample ids, float32 ``[N, D]``)."""
    sel = read_selection(store, [key], where, what="Norm-Rnd selection")
    return sel.ids, norm_rnd_of(sel.ids, sel.columns[0], seed)


def p2s_star(store, key: Key, where: str | None) -> tuple[list[str], np.ndarray]:
    """P2S*: every selected sample's own P2S vector: (sample ids, float32 ``[N, D]``)."""
    sel = read_selection(store, [key], where, what="P2S* selection")
    return sel.ids, sel.columns[0]
