"""The `l2s store ...`, `l2s sql` and `l2s catalog export` commands, end to end."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from l2s_data.cli import app
from l2s_data.store import ops

from .conftest import sample_ids, write_shard

runner = CliRunner()


def _l2s(*args: str):
    return runner.invoke(app, list(args))


def test_sql_prints_table_csv_and_json_and_refuses_writes(store):
    rid = store.put_recipe({"r": 1}, name="cli")
    write_shard(store, "a", rid, sample_ids(3))
    r = _l2s("sql", "SELECT view, count(*) AS n FROM manifests GROUP BY view", "--store", store.url, "--format", "csv")
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines() == ["view,n", "p2s,3"]
    r = _l2s("sql", "SELECT name FROM recipes", "--store", store.url, "--format", "json")
    assert json.loads(r.output) == [{"name": "cli"}]
    r = _l2s("sql", "SELECT name FROM recipes", "--store", store.url)
    assert r.exit_code == 0 and "cli" in r.output
    r = _l2s("sql", f"COPY (SELECT 1) TO '{store.url}/x.csv'", "--store", store.url)
    assert r.exit_code == 1 and "SQL refused" in r.output


def test_store_commands_info_verify_gc_compact_delete(store):
    rid = store.put_recipe({"r": 1}, name="cli")
    write_shard(store, "a", rid, sample_ids(3))
    write_shard(store, "b", rid, sample_ids(3, "t"))
    try:
        with store.shard_writer("c", rid, ["x"]) as w:
            w.write("p2s", "completion_last", 2, np.ones((1, 8), np.float32), "float32")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    r = _l2s("store", "info", "--store", store.url)
    assert r.exit_code == 0, r.output
    assert "2 shards" in r.output and "1 attempts" in r.output and "cli" in r.output
    assert _l2s("store", "verify", "--store", store.url).exit_code == 0
    r = _l2s("store", "gc", "--store", store.url, "--grace", "0")
    assert r.exit_code == 0 and "removed 1 attempt" in r.output
    r = _l2s("store", "compact", "--store", store.url)
    assert r.exit_code == 0 and "folded 2" in r.output
    store.put("runs", [{"run_id": "run-7", "kind": "train", "recipe_ids": [rid], "status": "done", "config_json": "{}"}])
    r = _l2s("store", "delete", "cli", "--store", store.url)
    assert r.exit_code == 1 and "run-7" in r.output
    r = _l2s("store", "delete", "cli", "--store", store.url, "--force")
    assert r.exit_code == 0 and "6 rows" in r.output
    assert store.admin.info().rows == 0


def test_verify_exits_nonzero_on_a_flipped_byte(store):
    rid = store.put_recipe({"r": 1})
    write_shard(store, "a", rid, sample_ids(3))
    attempt = store.snapshot().shards["a"]
    p = f"{store.url}/shards/a/{attempt}/p2s.completion_last.L2/c/0/0"
    data = bytearray(open(p, "rb").read())
    data[0] ^= 0x80
    open(p, "wb").write(bytes(data))
    r = _l2s("store", "verify", "--store", store.url)
    assert r.exit_code == 1 and "crc32c" in r.output


def test_sql_json_writes_nan_and_infinities_as_null_so_the_output_parses(store):
    import json

    r = _l2s("sql", "SELECT 'nan'::DOUBLE AS x, 'inf'::DOUBLE AS y, [1.5, 'nan'::DOUBLE] AS z, 2.5::DOUBLE AS w",
             "--store", store.url, "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == [{"x": None, "y": None, "z": [1.5, None], "w": 2.5}]


def test_catalog_export_and_a_missing_store(store, tmp_path):
    r = _l2s("catalog", "export", str(tmp_path / "c.duckdb"), "--store", store.url)
    assert r.exit_code == 0 and "manifests 0" in r.output
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]  # written whole, then renamed
    r = _l2s("store", "info", "--store", str(tmp_path / "nowhere"))
    assert r.exit_code == 1 and "no l2s-data store" in r.output
