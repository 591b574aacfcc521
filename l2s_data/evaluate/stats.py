"""What a reported number rests on: bootstrap intervals and paired tests on the same samples.

Pure functions of arrays (no store, no model)::

    mcnemar([True, True, False, False], [True, False, False, False]).p_value     # 1.0
    x = np.array([0, 1, 1, 0, 1])
    lo, hi = bootstrap_interval(lambda idx: float(x[idx].mean()), len(x))

- :func:`bootstrap_interval`: the percentile interval of a statistic over ``n_boot`` resamples
  (with replacement) of the n items it is computed from, seeded, so a report is reproducible.
  With n = 0 there is no interval (NaN, NaN); with n = 1 it collapses to the single value.
- :func:`mcnemar`: the exact McNemar test of two binary outcomes on the same items: under the
  null the discordant pairs split as Binomial(b + c, 1/2); the two-sided p-value is
  min(1, 2 P[X <= min(b, c)]). No discordant pair gives p = 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from l2s_data.errors import InputError

__all__ = ["N_BOOT", "LEVEL", "bootstrap_interval", "bootstrap_ratios", "percentile_interval", "McNemar", "mcnemar"]

#: Resamples of a bootstrap interval, and its coverage.
N_BOOT = 1000
LEVEL = 0.95


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n: int, *, n_boot: int = N_BOOT,
                       level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """The ``level`` percentile interval of ``statistic(indices)`` over ``n_boot`` resamples of
    ``range(n)`` with replacement. Resamples where the statistic is NaN are left out."""
    if not 0.0 < level < 1.0:
        raise InputError(f"level = {level!r}: expected a coverage in (0, 1), e.g. 0.95.")
    if n_boot < 1:
        raise InputError(f"n_boot = {n_boot!r}: expected at least 1 resample, e.g. 1000.")
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_boot)], np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0
    return float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` percentile interval of bootstrap ``values`` (NaN ones left out)."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0
    return float(np.quantile(v, tail)), float(np.quantile(v, 1.0 - tail))


def bootstrap_ratios(ratios: dict[str, tuple[np.ndarray, np.ndarray]], n: int, *, n_boot: int = N_BOOT,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Resampled values of statistics of the form sum(x_i m_i) / sum(m_i) (a share or a mean
    over the items where ``m_i`` is 1), ``n_boot`` resamples of the n items with replacement,
    all statistics on the same resamples. A resample where sum(m_i) = 0 gives NaN (left out of
    an interval). Each resample draws ``rng.integers(0, n, n)`` as :func:`bootstrap_interval`
    does, and counts each item's copies, so both see the same resamples for the same seed."""
    out = {k: np.full(n_boot, math.nan) for k in ratios}
    if n == 0:
        return out
    rng = np.random.default_rng(seed)
    xm = {k: (np.nan_to_num(np.asarray(x, np.float64)) * np.asarray(m, np.float64), np.asarray(m, np.float64))
          for k, (x, m) in ratios.items()}
    for b in range(n_boot):
        w = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)
        for k, (num, den) in xm.items():
            d = float(w @ den)
            if d > 0:
                out[k][b] = float(w @ num) / d
    return out


@dataclass(frozen=True)
class McNemar:
    """The paired comparison of outcomes ``a`` and ``b`` on ``n`` items: ``a_only`` items where
    only ``a`` holds, ``b_only`` where only ``b`` does, and the exact two-sided p-value."""

    n: int
    a_only: int
    b_only: int
    p_value: float


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """The exact McNemar test of ``a`` against ``b``, item by item (see the module doc)."""
    if len(a) != len(b):
        raise InputError(f"{len(a)} outcomes against {len(b)}: a paired test needs one outcome per item on "
                         f"each side, on the same items.")
    a_only = sum(1 for x, y in zip(a, b) if bool(x) and not bool(y))
    b_only = sum(1 for x, y in zip(a, b) if bool(y) and not bool(x))
    d = a_only + b_only
    if d == 0:
        return McNemar(len(a), 0, 0, 1.0)
    k = min(a_only, b_only)
    tail = sum(math.comb(d, i) for i in range(k + 1)) / 2.0 ** d
    return McNemar(len(a), a_only, b_only, min(1.0, 2.0 * tail))
