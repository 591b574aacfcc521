"""Manifests are checked, paths never leave the store, and maintenance is safe beside writers.

Each test here is a case that was reproduced against the previous store: bit flips in a
manifest that changed rows silently, a flipped attempt that made gc delete a committed attempt,
``..`` in manifest paths that made delete remove folders outside the store, compact racing
delete, gc during an extraction, and delete during an extraction.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from l2s_data.errors import CorruptManifestError, LeaseHeldError, StoreError, StoreNotFoundError
from l2s_data.store import Admin, Store
from l2s_data.store import manifests as mf
from l2s_data.store.leases import Lease

from .conftest import committed, rows, sample_ids, write_shard

KEYS = (("input", "prompt_last", 1), ("p2s", "completion_last", 2))


def _filled(store: Store, n_shards: int = 2, n: int = 6) -> dict:
    rid = store.put_recipe({"r": 1}, name="r")
    out = {}
    for k in range(n_shards):
        ids = sample_ids(n, prefix=f"k{k}-")
        out[f"m{k}"] = (ids, write_shard(store, f"m{k}", rid, ids, keys=KEYS, seed=k))
    return out


def _all_rows(store: Store) -> pa.Table:
    return store.snapshot().rows().sort_by([("array", "ascending"), ("row", "ascending")])


# -- checksums ----------------------------------------------------------------------------------


def test_every_single_bit_flip_in_a_manifest_is_an_error_naming_the_file(store):
    _filled(store, 1)
    path = Path(store.url) / "manifests" / "m0.parquet"
    good = path.read_bytes()
    reference = _all_rows(store)
    rng = np.random.default_rng(0)
    positions = sorted(set(rng.integers(0, len(good) * 8, 40).tolist()))
    for bit in positions:
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(bad))
        with pytest.raises(CorruptManifestError, match="manifests/m0.parquet"):
            store.snapshot()
        problems = store.admin.verify()
        assert problems and problems[0].what == "manifests/m0.parquet", f"verify missed bit {bit}"
    path.write_bytes(good)
    assert _all_rows(store).equals(reference)
    assert store.admin.verify() == []


def test_a_flipped_attempt_stops_gc_before_it_removes_anything(store):
    data = _filled(store, 1)
    path = Path(store.url) / "manifests" / "m0.parquet"
    attempt = store.snapshot().shards["m0"]
    raw = path.read_bytes()
    flipped = attempt[:-1] + ("0" if attempt[-1] != "0" else "1")
    assert raw.count(attempt.encode()) >= 1
    path.write_bytes(raw.replace(attempt.encode(), flipped.encode()))
    with pytest.raises(CorruptManifestError, match="manifests/m0.parquet"):
        store.admin.gc(grace_s=0)
    assert (Path(store.url) / "shards" / "m0" / attempt).is_dir()
    path.write_bytes(raw)
    ids, arrays = data["m0"]
    np.testing.assert_array_equal(store.snapshot().read("r", "p2s", "completion_last", 2, ids),
                                  arrays[("p2s", "completion_last", 2)])


# -- paths -------------------------------------------------------------------------------------


def _forge(store: Store, name: str, table: pa.Table, shards: dict[str, str]) -> None:
    """Write a manifest whose checksum is valid but whose content is hostile, as a writer that
    ignores the name rules would: only the path checks can stop it."""
    header = {"format_version": 2, "kind": "shard", "shards": shards, "bytes": {}, "committed_at": {},
              "supersedes": [], "deletes": [], "rows": table.num_rows, "file_sha256": "0" * 64}
    data = mf._write([table], header, None)
    field = b'"file_sha256": "'
    at = data.rindex(field) + len(field)
    data = data[:at] + hashlib.sha256(data).hexdigest().encode() + data[at + 64:]
    (Path(store.url) / name).write_bytes(data)


@pytest.mark.parametrize("column", ["shard", "attempt", "array", "view", "position"])
def test_dot_dot_in_any_path_column_is_refused_and_nothing_outside_the_store_is_touched(tmp_path, column):
    store = Store.open(tmp_path / "deep" / "store", create=True)
    victim = tmp_path / "x"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    _filled(store, 1)
    good = store.snapshot()
    table = good.rows()
    attempt = good.shards["m0"]
    evil = {"shard": "../../../x", "attempt": "../../../x", "array": "../../x",
            "view": "../..", "position": "../.."}[column]
    table = table.set_column(table.schema.get_field_index(column), column, pa.array([evil] * table.num_rows))
    (Path(store.url) / "manifests" / "m0.parquet").unlink()
    shards = {"m0": attempt} if column != "shard" else {"../../../x": attempt}
    _forge(store, "manifests/m0.parquet", table, shards)
    for action in (lambda: store.snapshot().rows(), lambda: store.admin.delete_recipe("r", force=True),
                   lambda: store.snapshot().read("r", evil if column == "view" else "p2s",
                                                 evil if column == "position" else "completion_last", 2, ["a"])):
        with pytest.raises(CorruptManifestError, match="manifests/m0.parquet|snapshot"):
            action()
    if column == "shard":  # a forged header stops gc; forged rows do not concern it (it lists folders)
        with pytest.raises(CorruptManifestError, match="manifests/m0.parquet"):
            store.admin.gc(grace_s=0)
    else:
        assert store.admin.gc(grace_s=0).removed == []
    assert store.admin.verify(), "verify must report the forged manifest"
    assert (victim / "keep.txt").read_text() == "precious"


# -- maintenance beside writers -----------------------------------------------------------------


def test_compact_racing_delete_never_resurrects_deleted_rows(store):
    keep = store.put_recipe({"keep": 1}, name="keep")
    for trial in range(10):
        drop = store.put_recipe({"drop": trial}, name=f"drop{trial}")
        for k in range(3):
            write_shard(store, f"d{trial}-{k}", drop, sample_ids(4, prefix=f"d{trial}{k}-"))
            write_shard(store, f"k{trial}-{k}", keep, sample_ids(4, prefix=f"k{trial}{k}-"))
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def run(op):
            start.wait()
            while True:
                try:
                    return op()
                except LeaseHeldError:
                    continue  # the other one holds the lease: retry once it is released
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
                    return None

        threads = [threading.Thread(target=run, args=(store.admin.compact,)),
                   threading.Thread(target=run, args=(lambda: store.admin.delete_recipe(f"drop{trial}"),))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        store.admin.compact()
        snap = store.snapshot()
        by_recipe = snap.rows(columns=["recipe_id"])["recipe_id"].to_pylist()
        assert drop not in by_recipe, f"trial {trial}: deleted rows came back"
        assert by_recipe.count(keep) == 4 * 3 * (trial + 1)
    assert store.admin.verify() == []


def test_gc_during_an_extraction_never_removes_what_the_extraction_commits(store):
    rid = store.put_recipe({"r": 1})
    ids = sample_ids(5)
    # gc runs while the writer is between its writes and its commit: gc claims the folder first.
    with pytest.raises(StoreError, match="claimed by `l2s store gc`|vanished"):
        with store.shard_writer("a", rid, ids) as w:
            w.write("p2s", "completion_last", 0, rows(5, 4), "float32")
            assert store.admin.gc(grace_s=0).removed == [w.dir]
    assert not committed(store, "a") and store.admin.verify() == []
    # The writer claims first: gc, run at once after, keeps the committed attempt.
    with store.shard_writer("b", rid, ids) as w2:
        w2.write("p2s", "completion_last", 0, rows(5, 4), "float32")
    assert store.admin.gc(grace_s=0).removed == []
    np.testing.assert_array_equal(store.snapshot().read(rid, "p2s", "completion_last", 0, ids), rows(5, 4))
    assert store.admin.verify() == []


def test_gc_keeps_an_attempt_a_writer_has_claimed_but_not_yet_committed(store):
    rid = store.put_recipe({"r": 1})
    w = store.shard_writer("c", rid, sample_ids(3))
    with w:
        w.write("p2s", "completion_last", 0, rows(3, 4), "float32")
        store.admin.backend.put_if_absent(f"{w.dir}/claim", json.dumps({"by": "writer", "at": "2999-01-01T00:00:00+00:00"}).encode())
        assert store.admin.gc(grace_s=0).removed == []
        w.commit = lambda: None  # this attempt's own claim is already made by hand above
    assert (Path(store.url) / w.dir).is_dir()


def test_delete_during_an_extraction_leaves_no_row_without_its_recipe(store):
    rid = store.put_recipe({"r": 1}, name="victim")
    write_shard(store, "old", rid, sample_ids(4, prefix="o"))
    with store.shard_writer("new", rid, sample_ids(4, prefix="n")) as w:
        w.write("p2s", "completion_last", 2, rows(4, 8), "float32")
        r = store.admin.delete_recipe("victim")
        assert r.rows == 4 and r.shards == ["old"]
    assert w.won
    recipes = set(store.sql("SELECT * FROM _recipes")["recipe_id"].to_pylist())
    committed = set(store.snapshot().rows(columns=["recipe_id"])["recipe_id"].to_pylist())
    assert committed == {rid} and committed <= recipes
    assert store.snapshot().rows(pc.field("shard") == "old").num_rows == 0
    assert store.admin.verify() == []


def test_a_second_maintenance_operation_is_refused_while_the_lease_is_held(store):
    _filled(store, 1)
    with Lease(store.admin.backend, op="test", ttl_s=600):
        with pytest.raises(LeaseHeldError, match="test by pid"):
            store.admin.compact()
    store.admin.compact()  # released: it goes through
    with Lease(store.admin.backend, op="crashed", ttl_s=0):
        pass  # a zero-length lease is expired at once, like a holder that died
    expired = Lease(store.admin.backend, op="dead", ttl_s=-1).acquire()  # never released
    assert expired.number is not None
    store.admin.compact(min_files=1)  # an expired lease does not block


def test_a_snapshot_taken_before_a_compaction_still_reads_its_rows(store):
    data = _filled(store, 3)
    before = store.snapshot()
    store.admin.compact()
    assert len(list((Path(store.url) / "manifests").iterdir())) == 1  # the files `before` listed are gone
    ids, arrays = data["m1"]
    np.testing.assert_array_equal(before.read("r", "input", "prompt_last", 1, ids), arrays[("input", "prompt_last", 1)])
    assert store.snapshot().id == before.id


def test_commits_past_the_threshold_compact_automatically(store, monkeypatch):
    from l2s_data.store import compaction

    monkeypatch.setattr(compaction, "LOOSE_FILES", 3)
    _filled(store, 5, n=2)
    names = sorted(p.name for p in (Path(store.url) / "manifests").iterdir())
    assert any(n.startswith("_compacted-") for n in names)
    assert len([n for n in names if not n.startswith("_")]) <= 3
    assert len(store.snapshot().shards) == 5


def test_a_store_path_that_is_a_file_gives_a_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreNotFoundError, match="is a file, not a store folder"):
        Store.open(f)


def test_a_format_1_store_is_refused_with_the_way_to_upgrade(tmp_path):
    store = Store.open(tmp_path / "old", create=True)
    marker = Path(store.url) / "l2s-store.json"
    marker.write_text(json.dumps({"format": "l2s-data store", "format_version": 1}))
    with pytest.raises(StoreError, match="l2s store migrate"):
        Store.open(tmp_path / "old")


def test_migrate_upgrades_a_format_1_store_and_keeps_every_row(tmp_path):
    import pyarrow.parquet as pq

    store = Store.open(tmp_path / "old", create=True)
    data = _filled(store, 3)
    before = store.snapshot()
    rid = before.rows()["recipe_id"][0].as_py()
    root = Path(store.url)
    for f in (root / "manifests").iterdir():  # rewrite as format 1 wrote them: plain Parquet
        rows = before.rows(pc.field("shard") == f.stem)
        f.unlink()
        pq.write_table(rows, f)
    (root / "l2s-store.json").write_text(json.dumps({"format": "l2s-data store", "format_version": 1}))
    # a runs part as format 1 wrote it: without the columns added since (sweep_id, val_cosine, val_mse)
    import datetime as dt

    old_run = pa.table({"run_id": ["r1"], "kind": ["train"], "created_at": pa.array([dt.datetime.now(dt.timezone.utc)],
                        pa.timestamp("us", tz="UTC")), "recipe_ids": [[rid]],
                        "snapshot_id": [before.id], "status": ["completed"], "config_json": ["{}"],
                        "metrics_json": [None], "artifact": [None]})
    (root / "runs").mkdir(exist_ok=True)
    pq.write_table(old_run, root / "runs" / "old.parquet")
    with pytest.raises(StoreError, match="l2s store migrate"):
        Store.open(root)
    assert Admin.migrate(root) == 3
    assert Admin.migrate(root) == 0  # a rerun does nothing
    after = Store.open(root).snapshot()
    assert after.id == before.id
    ids, arrays = data["m2"]
    np.testing.assert_array_equal(after.read("r", "p2s", "completion_last", 2, ids), arrays[("p2s", "completion_last", 2)])
    assert Store.open(root).admin.verify() == []
    runs = Store.open(root).sql("SELECT * FROM _runs").to_pylist()
    assert [(r["run_id"], r["sweep_id"]) for r in runs] == [("r1", None)]
    with pytest.raises(StoreError, match="referenced by 1 run"):
        Store.open(root).admin.delete_recipe("r")  # the old run still protects its recipe
