"""The on-disk contract of l2s-data: Arrow schemas of every Parquet table, versioned.

This folder is installed as ``l2s_data.schemas``. Golden tests in ``tests/test_schemas.py``
pin every schema exactly: a change here is a format change and must bump ``FORMAT_VERSION``.
"""

from __future__ import annotations

import pyarrow as pa

#: Bumped on any change to a schema below or to the store layout.
FORMAT_VERSION = 2

#: One row per distinct model input. ``sample_id`` hashes (image bytes, query).
SAMPLES = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        # Path of the image, relative to the dataset directory that holds samples.parquet
        # (or absolute when the user's image folder lives elsewhere).
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
    ],
    metadata={"l2s.table": "samples", "l2s.format_version": str(FORMAT_VERSION)},
)

#: One row per (dataset, subset, question) pointing at a sample. Many rows may share a sample.
MEMBERSHIPS = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("subset", pa.string(), nullable=False),
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        # POPE: "yes" / "no"; safety: the desired behaviour ("refuse" / "defer"); may be null.
        pa.field("label", pa.string(), nullable=True),
        pa.field("split", pa.string(), nullable=False),
    ],
    metadata={"l2s.table": "memberships", "l2s.format_version": str(FORMAT_VERSION)},
)

def _meta(table: str) -> dict[str, str]:
    return {"l2s.table": table, "l2s.format_version": str(FORMAT_VERSION)}


_UTC_US = pa.timestamp("us", tz="UTC")

#: One row per (recipe, name). ``recipe_id`` is the sha256 (first 32 hex chars) of the
#: canonical JSON of ``spec_json``; ``name`` is an optional human alias, unique per store.
RECIPES = pa.schema(
    [
        pa.field("recipe_id", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=True),
        pa.field("spec_json", pa.string(), nullable=False),
        pa.field("created_at", _UTC_US, nullable=False),
    ],
    metadata=_meta("recipes"),
)

#: One row per stored key (recipe, view, position, layer, sample), written by the shard attempt
#: that holds it. The file ``manifests/<shard>.parquet`` existing is what commits the shard.
MANIFESTS = pa.schema(
    [
        pa.field("recipe_id", pa.string(), nullable=False),
        pa.field("view", pa.string(), nullable=False),
        pa.field("position", pa.string(), nullable=False),
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("attempt", pa.string(), nullable=False),
        # Zarr array path relative to the store root: shards/<shard>/<attempt>/<view>.<position>.L<layer>
        pa.field("array", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("chunk_rows", pa.int32(), nullable=False),
        # Logical dtype: float32, float16 or bfloat16 (bfloat16 is stored as uint16 bits).
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("dim", pa.int32(), nullable=False),
        # L2 norm of the stored row, computed in float32 from the stored (down-cast) values.
        pa.field("norm", pa.float32(), nullable=False),
        # crc32c (8 hex chars) of the row's stored little-endian bytes.
        pa.field("checksum", pa.string(), nullable=False),
        pa.field("written_at", _UTC_US, nullable=False),
    ],
    metadata=_meta("manifests"),
)

#: One row per training run / sweep member. ``recipe_ids`` keeps recipes from being deleted.
RUNS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("created_at", _UTC_US, nullable=False),
        pa.field("recipe_ids", pa.list_(pa.string()), nullable=False),
        pa.field("snapshot_id", pa.string(), nullable=True),
        pa.field("status", pa.string(), nullable=False),
        pa.field("config_json", pa.string(), nullable=False),
        pa.field("metrics_json", pa.string(), nullable=True),
        pa.field("artifact", pa.string(), nullable=True),
        # The sweep a trial belongs to (null for a lone training).
        pa.field("sweep_id", pa.string(), nullable=True),
        # Headline offline metrics on the validation rows, so SQL can rank runs.
        pa.field("val_cosine", pa.float64(), nullable=True),
        pa.field("val_mse", pa.float64(), nullable=True),
    ],
    metadata=_meta("runs"),
)

#: One row per evaluated response (method x alpha x sample).
EVALUATIONS = pa.schema(
    [
        pa.field("evaluation_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=True),
        pa.field("created_at", _UTC_US, nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("alpha", pa.float64(), nullable=True),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("question_id", pa.string(), nullable=True),
        pa.field("response", pa.string(), nullable=False),
        pa.field("scores_json", pa.string(), nullable=True),
    ],
    metadata=_meta("evaluations"),
)

#: One row per quarantined input or failed unit of work.
ERRORS = pa.schema(
    [
        pa.field("recipe_id", pa.string(), nullable=True),
        pa.field("sample_id", pa.string(), nullable=True),
        pa.field("shard", pa.string(), nullable=True),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("created_at", _UTC_US, nullable=False),
    ],
    metadata=_meta("errors"),
)

#: One row per extraction run (in-process or on Ray, completed or failed): what it computed,
#: what it found cached, on which workers, how fast. Committed like the other tables.
EXTRACTIONS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", _UTC_US, nullable=False),
        # "completed" or "failed" (a shard failed on every attempt; ``error`` says which).
        pa.field("status", pa.string(), nullable=False),
        # The resolved extraction config (ExtractConfig.to_dict()), canonical JSON.
        pa.field("config_json", pa.string(), nullable=False),
        pa.field("recipe_ids", pa.list_(pa.string()), nullable=False),
        # 0 = in the driver's process; N = N Ray actors.
        pa.field("workers", pa.int32(), nullable=False),
        # One entry per worker: the torch device it computed on ("cpu", "cuda:0").
        pa.field("devices", pa.list_(pa.string()), nullable=False),
        pa.field("samples_computed", pa.int64(), nullable=False),
        # samples_computed over the run's wall time (start to end, planning included).
        pa.field("samples_per_s", pa.float64(), nullable=False),
        pa.field("keys_written", pa.int64(), nullable=False),
        # Keys of the plan that the store already had (skipped as cached).
        pa.field("keys_cached", pa.int64(), nullable=False),
        pa.field("samples_quarantined", pa.int64(), nullable=False),
        pa.field("shards", pa.int32(), nullable=False),
        # Shards that needed more than one attempt (an error, or a worker that died).
        pa.field("shards_retried", pa.int32(), nullable=False),
        # Shards another attempt committed first (this run's attempt is an orphan).
        pa.field("shards_lost_races", pa.int32(), nullable=False),
        pa.field("started_at", _UTC_US, nullable=False),
        pa.field("ended_at", _UTC_US, nullable=False),
        pa.field("error", pa.string(), nullable=True),
    ],
    metadata=_meta("extractions"),
)

#: Every committed Parquet table of a store, by its folder / catalog name.
TABLES: dict[str, pa.Schema] = {
    "samples": SAMPLES,
    "memberships": MEMBERSHIPS,
    "recipes": RECIPES,
    "manifests": MANIFESTS,
    "runs": RUNS,
    "evaluations": EVALUATIONS,
    "errors": ERRORS,
    "extractions": EXTRACTIONS,
}

#: ``zarr.json`` attributes of every stored array live under this key.
ZARR_ATTRIBUTES_KEY = "l2s"
#: The keys of that attribute object, in order (pinned by the golden test).
ZARR_ATTRIBUTES = (
    "format_version",
    "recipe_id",
    "shard",
    "attempt",
    "view",
    "position",
    "layer",
    "logical_dtype",
    "sample_ids_sha256",
)


def catalog_sql() -> str:
    """The SQL that builds the catalog views over the raw registered tables ``_<name>``."""
    from pathlib import Path

    return (Path(__file__).parent / "catalog.sql").read_text(encoding="utf-8")


__all__ = [
    "FORMAT_VERSION",
    "SAMPLES",
    "MEMBERSHIPS",
    "RECIPES",
    "MANIFESTS",
    "RUNS",
    "EVALUATIONS",
    "ERRORS",
    "EXTRACTIONS",
    "TABLES",
    "ZARR_ATTRIBUTES_KEY",
    "ZARR_ATTRIBUTES",
    "catalog_sql",
]
