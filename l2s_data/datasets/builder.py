"""Shared machinery of every loader: read images once, hash, quarantine, build the tables.

A loader hands each (image, query, membership) to :class:`TableBuilder`. Problems with one
item (missing or unreadable image, empty query, a path escaping the root) are quarantined
into ``DatasetTables.errors`` with the reason and the import goes on; with ``strict=True``
the first problem is raised instead.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from l2s_data.datasets.ids import CONTENT_ID_HEX, _MAGIC
from l2s_data.datasets.tables import ERRORS_SCHEMA, DatasetTables
from l2s_data.errors import DataSourceError, ImageError, L2SError
from l2s_data.schemas import MEMBERSHIPS, SAMPLES

__all__ = ["ImageInfo", "TableBuilder", "read_image_info", "image_info_from_bytes", "split_groups"]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class ImageInfo:
    """What the tables need to know about one image file."""

    sha256: str
    width: int
    height: int
    _prefix: Any  # sha256 state after the framed image bytes: content ids reuse it per query

    def content_id(self, query: str) -> str:
        """Same value as ``content_id(image_bytes, query)``, without rehashing the image."""
        h = self._prefix.copy()
        q = query.encode("utf-8")
        h.update(len(q).to_bytes(8, "big"))
        h.update(q)
        return h.hexdigest()[:CONTENT_ID_HEX]


def image_info_from_bytes(data: bytes, *, what: str) -> ImageInfo:
    """Decode ``data`` fully (so a truncated file fails now, not during extraction)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            w, h = im.size
    except (OSError, Image.DecompressionBombError, ValueError, SyntaxError) as e:
        raise ImageError(f"{what}: image cannot be decoded ({type(e).__name__}: {e}).") from e
    prefix = hashlib.sha256()
    prefix.update(_MAGIC)
    prefix.update(len(data).to_bytes(8, "big"))
    prefix.update(data)
    return ImageInfo(hashlib.sha256(data).hexdigest(), int(w), int(h), prefix)


def read_image_info(path: Path, *, what: str) -> ImageInfo:
    """Read and decode one image file; :class:`ImageError` names ``what`` and the path."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(
            f"{what}: image {str(path)!r} does not exist. Fix: point the loader at the folder "
            f"that holds it."
        ) from None
    except OSError as e:
        raise ImageError(f"{what}: image {str(path)!r} cannot be read: {e}") from e
    try:
        return image_info_from_bytes(data, what=what)
    except ImageError as e:
        raise ImageError(f"{what}: image {str(path)!r} is not a readable image ({e.__cause__}).") from e


def split_groups(groups: list[str], *, test_fraction: float, seed: int) -> dict[str, str]:
    """Assign whole groups (e.g. images) to "train"/"test": no group lands in both.

    The distinct groups are sorted, shuffled with ``numpy.random.default_rng(seed)``, and the
    first ``round(test_fraction * n)`` go to test, so the result depends on the set of groups
    and the seed alone, not on the order items came in.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise DataSourceError(f"test_fraction must be in [0, 1], got {test_fraction}.")
    uniq = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(uniq))
    n_test = int(round(test_fraction * len(uniq)))
    test = {uniq[i] for i in order[:n_test]}
    return {g: ("test" if g in test else "train") for g in uniq}


class TableBuilder:
    """Collects samples, memberships and quarantined errors, then builds :class:`DatasetTables`."""

    def __init__(self, *, root: Path, strict: bool = False) -> None:
        self.root = Path(root)
        self.strict = strict
        self._samples: dict[str, dict[str, Any]] = {}
        self._members: list[dict[str, Any]] = []
        self._member_keys: set[tuple[str, str, str]] = set()
        self._errors: list[dict[str, str]] = []

    def quarantine(self, source: str, item: str, error: L2SError | str) -> None:
        """Record one bad item, or raise it when ``strict``."""
        if self.strict:
            if isinstance(error, L2SError):
                raise error
            raise DataSourceError(f"{source}: {item}: {error}")
        self._errors.append({"source": str(source), "item": str(item), "reason": str(error)})

    def add(self, *, image: ImageInfo, image_path: str, query: str, dataset: str, subset: str,
            question_id: str, category: str, label: str | None, split: str) -> str:
        """Add one membership (and its sample, if new); returns the sample id."""
        if split not in SPLITS:
            raise DataSourceError(f"{dataset}/{question_id}: split must be one of {SPLITS}, got {split!r}.")
        key = (dataset, subset, question_id)
        if key in self._member_keys:
            raise DataSourceError(
                f"{dataset}: question_id {question_id!r} appears twice in subset {subset!r}; "
                f"question ids must be unique within a subset."
            )
        sid = image.content_id(query)
        if sid not in self._samples:
            self._samples[sid] = {
                "sample_id": sid, "query": query, "image_path": image_path,
                "image_sha256": image.sha256, "width": image.width, "height": image.height,
            }
        self._member_keys.add(key)
        self._members.append({
            "dataset": dataset, "subset": subset, "question_id": question_id, "sample_id": sid,
            "category": category, "label": label, "split": split,
        })
        return sid

    @property
    def n_errors(self) -> int:
        return len(self._errors)

    @property
    def first_error(self) -> str | None:
        """The reason of the first quarantined item, if any."""
        return self._errors[0]["reason"] if self._errors else None

    def build(self, info: dict[str, Any] | None = None) -> DatasetTables:
        samples = pa.Table.from_pylist(list(self._samples.values()), schema=SAMPLES)
        members = pa.Table.from_pylist(self._members, schema=MEMBERSHIPS)
        errors = pa.Table.from_pylist(self._errors, schema=ERRORS_SCHEMA) if self._errors else None
        return DatasetTables(samples, members, self.root, errors, dict(info or {}))


def check_query(query: Any, *, what: str) -> str:
    """A query must be a non-empty string once surrounding whitespace is removed."""
    if not isinstance(query, str):
        raise DataSourceError(f"{what}: query must be a string, got {type(query).__name__} ({query!r}).")
    q = query.strip()
    if not q:
        raise DataSourceError(f"{what}: query is empty. Fix: give the question text, or drop the item.")
    return q
