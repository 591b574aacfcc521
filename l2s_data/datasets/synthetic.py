"""The synthetic data sets, by name: deterministic stand-ins that run anywhere."""

from __future__ import annotations

import os
from pathlib import Path

from l2s_data.datasets.shapes_pope import make_shapes_pope
from l2s_data.datasets.synthetic_safety import make_synthetic_safety
from l2s_data.datasets.tables import DatasetTables, write_dataset
from l2s_data.errors import DataSourceError

__all__ = ["SYNTHETIC_NAMES", "make_synthetic"]

#: Names accepted by :func:`make_synthetic` (and `l2s data make-synthetic`).
SYNTHETIC_NAMES: tuple[str, ...] = ("shapes-pope", "synthetic-safety")


def make_synthetic(name: str, out_dir: str | os.PathLike, *, n: int = 100, seed: int = 0,
                   test_fraction: float = 0.2) -> DatasetTables:
    """Generate a synthetic data set into ``out_dir`` (images + Parquet) and return its tables.

    ``n`` is the number of images: shapes-pope asks up to 6 questions about each, in each of its
    three subsets; synthetic-safety asks one query about each. The same (name, n, seed) gives
    the same bytes and the same sample ids on every run and machine.
    """
    if name not in SYNTHETIC_NAMES:
        raise DataSourceError(f"unknown synthetic data set {name!r}; known: {list(SYNTHETIC_NAMES)}.")
    if not isinstance(n, int) or n < 1:
        raise DataSourceError(f"{name}: n must be a positive integer (number of images), got {n!r}.")
    out = Path(out_dir)
    if name == "synthetic-safety":
        tables = make_synthetic_safety(out, n=n, seed=seed, test_fraction=test_fraction)
    else:
        tables = make_shapes_pope(out, n=n, seed=seed, test_fraction=test_fraction)
    write_dataset(tables, out)
    return tables
