"""Golden tests: the on-disk format (Arrow schemas, catalog views, zarr.json) is pinned exactly.

A failure here means the format changed. If that is intended, bump ``FORMAT_VERSION`` in
``schemas/__init__.py`` and regenerate the golden file:

    python tests/test_schemas.py --regen
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

import l2s_data.schemas as schemas

GOLDEN = Path(__file__).parent / "golden" / "store_format.json"


def _schema_doc(s: pa.Schema) -> dict:
    return {
        "fields": [[f.name, str(f.type), f.nullable] for f in s],
        "metadata": {k.decode(): v.decode() for k, v in (s.metadata or {}).items()},
    }


def _zarr_json(tmp: Path) -> dict:
    """The zarr.json of one stored array, with the per-write values replaced by placeholders."""
    from l2s_data.store import Store

    store = Store.open(tmp / "store", create=True)
    rid = store.put_recipe({"golden": 1})
    with store.shard_writer("s0", rid, ["a", "b", "c"]) as w:
        w.write("pos", "completion_last", 7, np.zeros((3, 4), np.float32), "bfloat16")
    attempt = store.snapshot().shards["s0"]
    meta = json.loads((tmp / "store" / "shards" / "s0" / attempt / "pos.completion_last.L7" / "zarr.json").read_text())
    meta["attributes"]["l2s"]["attempt"] = "<attempt>"
    meta["attributes"]["l2s"]["recipe_id"] = "<recipe_id>"
    return meta


def _catalog_views(tmp: Path) -> dict:
    from l2s_data.store import Store
    from l2s_data.store.sandbox import VIEWS

    store = Store.open(tmp / "views", create=True)
    out = {}
    for v in VIEWS:
        t = store.sql(f"DESCRIBE {v}")
        out[v] = [[n, ty] for n, ty in zip(t["column_name"].to_pylist(), t["column_type"].to_pylist())]
    return out


def _contract() -> dict:
    """A recipe id, the bytes of a chunk, and the bf16 conversion: what every store relies on."""
    import hashlib

    from l2s_data.store._zarr_write import chunk_files
    from l2s_data.store.contract import canonical_json, float32_to_bfloat16_bits, recipe_id

    spec = {"model": {"fingerprint": "f" * 8, "dtype": "bfloat16"}, "layers": [14, 30], "note": "é"}
    rows = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5) / 3
    chunks = {}
    for dtype, stored in (("float32", rows), ("bfloat16", float32_to_bfloat16_bits(rows))):
        for key, parts in chunk_files(np.ascontiguousarray(stored), 2):
            chunks[f"{dtype}/{key}"] = hashlib.sha256(b"".join(bytes(p) for p in parts)).hexdigest()
    return {"canonical_json": canonical_json(spec), "recipe_id": recipe_id(spec), "chunks": chunks}


def _manifest_header(tmp: Path) -> list[str]:
    """The keys of a manifest's checked header."""
    import pyarrow.parquet as pq

    from l2s_data.store import Store

    store = Store.open(tmp / "header", create=True)
    with store.shard_writer("s0", store.put_recipe({"h": 1}), ["a"]) as w:
        w.write("p2s", "completion_last", 0, np.zeros((1, 2), np.float32), "float32")
    md = pq.ParquetFile(tmp / "header" / "manifests" / "s0.parquet").metadata
    return sorted(json.loads(md.metadata[b"l2s.manifest"]))


def current(tmp: Path) -> dict:
    return {
        "format_version": schemas.FORMAT_VERSION,
        "tables": {name: _schema_doc(s) for name, s in schemas.TABLES.items()},
        "zarr_attributes": [schemas.ZARR_ATTRIBUTES_KEY, list(schemas.ZARR_ATTRIBUTES)],
        "zarr_json": _zarr_json(tmp),
        "catalog_views": _catalog_views(tmp),
        "contract": _contract(),
        "manifest_header": _manifest_header(tmp),
        "store_layout": {
            "marker": "l2s-store.json",
            "manifest": "manifests/<shard>.parquet",
            "compacted": "manifests/_compacted-<hash>.parquet",
            "tombstone": "manifests/_tombstone-<hash>.parquet",
            "lease": "leases/<name>-<n>.json",
            "claim": "shards/<shard>/<attempt>/claim",
            "attempt": "shards/<shard>/<attempt>/<view>.<position>.L<layer>",
        },
    }


def test_every_schema_and_the_format_version_match_the_golden_file(tmp_path):
    want = json.loads(GOLDEN.read_text())
    got = json.loads(json.dumps(current(tmp_path)))
    assert got["format_version"] == want["format_version"]
    for name in want["tables"]:
        assert got["tables"].get(name) == want["tables"][name], f"schema {name} changed: bump FORMAT_VERSION"
    assert got["contract"] == want["contract"], "recipe ids or chunk bytes changed: bump FORMAT_VERSION"
    assert got == want


def test_zarr_json_attributes_are_exactly_the_pinned_keys(tmp_path):
    attrs = _zarr_json(tmp_path)["attributes"]
    assert list(attrs) == [schemas.ZARR_ATTRIBUTES_KEY]
    assert tuple(attrs["l2s"]) == schemas.ZARR_ATTRIBUTES
    assert attrs["l2s"]["logical_dtype"] == "bfloat16"


def test_samples_and_memberships_keep_their_shared_columns():
    assert schemas.SAMPLES.names == ["sample_id", "query", "image_path", "image_sha256", "width", "height"]
    assert schemas.MEMBERSHIPS.names == ["dataset", "subset", "question_id", "sample_id", "category", "label", "split"]


def test_manifests_hold_one_row_per_key_with_its_location_norm_and_checksum():
    names = schemas.MANIFESTS.names
    for col in ("recipe_id", "view", "position", "layer", "sample_id", "shard", "attempt", "array", "row",
                "dtype", "dim", "norm", "checksum"):
        assert col in names


def test_every_table_names_itself_and_the_format_version():
    for name, s in schemas.TABLES.items():
        assert s.metadata[b"l2s.table"] == name.encode()
        assert s.metadata[b"l2s.format_version"] == str(schemas.FORMAT_VERSION).encode()


if __name__ == "__main__" and "--regen" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        GOLDEN.write_text(json.dumps(current(Path(d)), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
