"""The in-memory form of a data set (samples + memberships + quarantined errors) and its files.

On disk a data set is a directory::

    samples.parquet       SAMPLES schema (l2s_data.schemas), one row per distinct model input
    memberships.parquet   MEMBERSHIPS schema, one row per (dataset, subset, question)
    errors.parquet        quarantined inputs (source, item, reason); only when there are any
    dataset.json          how it was made (loader, options, counts): the resolved config
    images/               the images, when they were generated or copied in

``image_path`` values are relative to that directory, or absolute when the images live in a
folder the user gave (POPE's COCO folder, an MM-SafetyBench checkout).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from l2s_data.datasets.ids import sha256_hex
from l2s_data.errors import DataSourceError, ImageError
from l2s_data.schemas import FORMAT_VERSION, MEMBERSHIPS, SAMPLES

__all__ = [
    "ERRORS_SCHEMA",
    "DatasetTables",
    "read_dataset",
    "write_dataset",
    "resolve_inside",
]

#: Quarantined inputs of an import: where (source file or data set), which item, and why.
ERRORS_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("item", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ],
    metadata={"l2s.table": "dataset_errors", "l2s.format_version": str(FORMAT_VERSION)},
)

SAMPLES_FILE = "samples.parquet"
MEMBERSHIPS_FILE = "memberships.parquet"
ERRORS_FILE = "errors.parquet"
INFO_FILE = "dataset.json"


def resolve_inside(root: Path, rel: str, *, what: str) -> Path:
    """Resolve ``rel`` against ``root`` and refuse anything that lands outside ``root``.

    ``what`` names the sample or line in the error (e.g. "sample 1f3a..." or "file.json line 7").
    Symlinks are resolved first, so a link pointing out of the root is refused too.
    """
    root_r = Path(root).resolve()
    p = Path(rel)
    if p.is_absolute():
        raise ImageError(
            f"{what}: image path {rel!r} is absolute, expected a path relative to the data set "
            f"root {str(root_r)!r}. Fix: give the path relative to that folder."
        )
    full = (root_r / p).resolve()
    if full != root_r and root_r not in full.parents:
        raise ImageError(
            f"{what}: image path {rel!r} escapes the data set root {str(root_r)!r} "
            f"(resolves to {str(full)!r}). Fix: keep images inside the root folder."
        )
    return full


def _conform(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """Select and cast ``table``'s columns to ``schema`` (keeps the schema's metadata)."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise DataSourceError(
            f"{name} table lacks column(s) {missing}; expected exactly {schema.names}."
        )
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DataSourceError(f"{name} table does not match its schema {schema.names}: {e}") from e


@dataclass(frozen=True)
class DatasetTables:
    """Samples, memberships and quarantined errors of one data set.

    ``root`` is what relative ``image_path`` values are relative to. Construction validates the
    schemas and the uniqueness of ``sample_id`` and does no I/O.
    """

    samples: pa.Table
    memberships: pa.Table
    root: Path
    errors: pa.Table | None = None
    #: How the data set was made (loader name, options, counts); written as dataset.json.
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "samples", _conform(self.samples, SAMPLES, "samples"))
        object.__setattr__(self, "memberships", _conform(self.memberships, MEMBERSHIPS, "memberships"))
        if self.errors is not None:
            object.__setattr__(self, "errors", _conform(self.errors, ERRORS_SCHEMA, "errors"))
        ids = self.samples.column("sample_id")
        if len(ids) != len(pc.unique(ids)):
            counts = pc.value_counts(ids)
            dup = [v["values"].as_py() for v in counts if v["counts"].as_py() > 1][:3]
            raise DataSourceError(f"samples table has duplicate sample_id values, e.g. {dup}.")

    # ---------------------------------------------------------------- lookups

    @cached_property
    def _paths(self) -> dict[str, str]:
        return dict(
            zip(self.samples.column("sample_id").to_pylist(), self.samples.column("image_path").to_pylist())
        )

    @cached_property
    def _queries(self) -> dict[str, str]:
        return dict(
            zip(self.samples.column("sample_id").to_pylist(), self.samples.column("query").to_pylist())
        )

    def __len__(self) -> int:
        return self.samples.num_rows

    @property
    def sample_ids(self) -> list[str]:
        return self.samples.column("sample_id").to_pylist()

    def query(self, sample_id: str) -> str:
        """The query text of a sample."""
        try:
            return self._queries[sample_id]
        except KeyError:
            raise DataSourceError(self._unknown(sample_id)) from None

    def image_path(self, sample_id: str) -> Path:
        """The sample's image file: relative paths resolved under ``root`` and checked to stay there."""
        try:
            rel = self._paths[sample_id]
        except KeyError:
            raise DataSourceError(self._unknown(sample_id)) from None
        if Path(rel).is_absolute():
            return Path(rel)
        return resolve_inside(self.root, rel, what=f"sample {sample_id}")

    def load_image(self, sample_id: str) -> Image.Image:
        """Open the sample's image as RGB (decoded now, so a broken file fails here)."""
        path = self.image_path(sample_id)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise ImageError(
                f"sample {sample_id}: image {str(path)!r} does not exist. Fix: restore the file, "
                f"or re-import the data set with the right image folder."
            ) from None
        except (OSError, Image.DecompressionBombError, ValueError) as e:
            raise ImageError(f"sample {sample_id}: image {str(path)!r} cannot be read: {e}") from e

    def _unknown(self, sample_id: str) -> str:
        return (
            f"sample_id {sample_id!r} is not in this data set ({self.samples.num_rows} samples, "
            f"root {str(self.root)!r})."
        )

    # ---------------------------------------------------------------- selections

    def records(self) -> list[dict[str, Any]]:
        """Membership rows joined with their sample's query and image path (one dict each)."""
        out = []
        for row in self.memberships.to_pylist():
            row["query"] = self._queries[row["sample_id"]]
            row["image_path"] = self._paths[row["sample_id"]]
            out.append(row)
        return out

    def select(self, *, split: str | None = None, dataset: str | None = None,
               subset: str | None = None, category: str | None = None) -> DatasetTables:
        """Memberships filtered by the given values, and only the samples they point at."""
        m = self.memberships
        for col, val in (("split", split), ("dataset", dataset), ("subset", subset), ("category", category)):
            if val is not None:
                m = m.filter(pc.equal(m.column(col), val))
        keep = pc.unique(m.column("sample_id"))
        s = self.samples.filter(pc.is_in(self.samples.column("sample_id"), value_set=keep))
        return DatasetTables(s, m, self.root, self.errors, dict(self.info))


# -------------------------------------------------------------------- files


def read_dataset(path: str | os.PathLike) -> DatasetTables:
    """Read a directory written by :func:`write_dataset`."""
    root = Path(path)
    if not root.is_dir():
        raise DataSourceError(
            f"data set directory {str(root)!r} does not exist. Fix: write one with "
            f"`l2s data make-synthetic` or `l2s data import`."
        )
    tables = {}
    for name in (SAMPLES_FILE, MEMBERSHIPS_FILE):
        f = root / name
        if not f.is_file():
            raise DataSourceError(
                f"{str(f)!r} is missing: {str(root)!r} is not a data set directory (expected "
                f"{SAMPLES_FILE} and {MEMBERSHIPS_FILE})."
            )
        try:
            tables[name] = pq.read_table(f)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataSourceError(f"{str(f)!r} is not a readable Parquet file: {e}") from e
    errors = pq.read_table(root / ERRORS_FILE) if (root / ERRORS_FILE).is_file() else None
    info = json.loads((root / INFO_FILE).read_text()) if (root / INFO_FILE).is_file() else {}
    return DatasetTables(tables[SAMPLES_FILE], tables[MEMBERSHIPS_FILE], root, errors, info)


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)  # a reader never sees half a file


def write_dataset(tables: DatasetTables, out_dir: str | os.PathLike, *, copy_images: bool = False) -> Path:
    """Write ``tables`` as a data set directory and return its path.

    Relative image paths are copied from ``tables.root`` into ``out_dir`` at the same relative
    path (nothing to copy when ``out_dir`` is the root). Absolute paths are kept as they are,
    unless ``copy_images`` is set: then each such image is copied to
    ``images/<image_sha256[:32]><suffix>`` and the path becomes relative, which makes the
    directory self-contained.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    out_r = out.resolve()
    root_r = tables.root.resolve()
    new_paths = []
    for sid, rel, sha in zip(
        tables.samples.column("sample_id").to_pylist(),
        tables.samples.column("image_path").to_pylist(),
        tables.samples.column("image_sha256").to_pylist(),
    ):
        if Path(rel).is_absolute():
            if not copy_images:
                new_paths.append(rel)
                continue
            src = Path(rel)
            rel = f"images/{sha[:32]}{src.suffix.lower()}"
        else:
            src = resolve_inside(root_r, rel, what=f"sample {sid}")
        dst = resolve_inside(out_r, rel, what=f"sample {sid}")
        if src != dst and not (dst.is_file() and sha256_hex(dst.read_bytes()) == sha):
            if not src.is_file():
                raise ImageError(f"sample {sid}: image {str(src)!r} does not exist, cannot copy it.")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        new_paths.append(rel)
    samples = tables.samples.set_column(
        tables.samples.schema.get_field_index("image_path"), SAMPLES.field("image_path"),
        pa.array(new_paths, pa.string()),
    )
    _write_parquet(samples, out / SAMPLES_FILE)
    _write_parquet(tables.memberships, out / MEMBERSHIPS_FILE)
    if tables.errors is not None and tables.errors.num_rows:
        _write_parquet(tables.errors, out / ERRORS_FILE)
    elif (out / ERRORS_FILE).exists():
        (out / ERRORS_FILE).unlink()  # stale quarantine from an earlier import
    info = dict(tables.info)
    info.update(
        format_version=FORMAT_VERSION,
        samples=samples.num_rows,
        memberships=tables.memberships.num_rows,
        errors=0 if tables.errors is None else tables.errors.num_rows,
    )
    (out / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out
