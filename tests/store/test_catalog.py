"""The SQL catalog: views over committed tables, and every way out of the sandbox refused."""

from __future__ import annotations

import os

import duckdb
import pytest

from l2s_data.errors import SQLRefusedError, StoreError
from l2s_data.store import Key
from l2s_data.store.sandbox import check_where

from .conftest import sample_ids, tables, write_shard


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    # Built once: the tests here only read it (the escapes must leave it unchanged anyway).
    from l2s_data.store import Store

    store = Store.open(tmp_path_factory.mktemp("catalog") / "store", create=True)
    rid = store.put_recipe({"r": 1}, name="r")
    ids = sample_ids(12)
    write_shard(store, "a", rid, ids[:6])
    write_shard(store, "b", rid, ids[6:])
    s, m = tables(ids)
    store.put("samples", s, memberships=m)
    store.put("samples", s, memberships=m)  # same content again: same part, the views dedupe anyway
    store.put("runs", [{"run_id": "run1", "kind": "train", "recipe_ids": [rid], "status": "done", "config_json": "{}"}])
    return store


def _snapshot_of_files(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[p] = os.path.getsize(p)
    return out


def test_views_answer_queries_over_committed_tables(filled):
    t = filled.sql("SELECT split, count(*) AS n FROM memberships GROUP BY split ORDER BY split")
    assert t.to_pylist() == [{"split": "test", "n": 3}, {"split": "train", "n": 9}]
    assert filled.sql("SELECT count(*) AS n FROM samples")["n"][0].as_py() == 12
    assert filled.sql("SELECT count(*) AS n FROM manifests")["n"][0].as_py() == 12
    assert filled.sql("SELECT count(*) AS n FROM shards")["n"][0].as_py() == 2
    assert filled.sql("SELECT name FROM recipes")["name"].to_pylist() == ["r"]
    assert filled.sql("SELECT run_id FROM runs")["run_id"].to_pylist() == ["run1"]
    assert filled.sql("SELECT count(*) AS n FROM errors")["n"][0].as_py() == 0
    assert filled.sql("SELECT count(*) AS n FROM evaluations")["n"][0].as_py() == 0


def test_sql_binds_parameters_instead_of_quoting(filled):
    # A value holding a quote is bound, never spliced: it matches nothing and escapes nothing.
    q = "SELECT count(*) AS n FROM memberships WHERE split = ?"
    assert filled.sql(q, params=["train"])["n"][0].as_py() == 9
    assert filled.sql(q, params=("test",))["n"][0].as_py() == 3
    assert filled.sql(q, params=["x' OR '1'='1"])["n"][0].as_py() == 0
    named = "SELECT count(*) AS n FROM memberships WHERE split = $split"
    assert filled.sql(named, params={"split": "test"})["n"][0].as_py() == 3
    with pytest.raises(SQLRefusedError, match="pass \\[value\\]"):
        filled.sql(q, params="train")


ESCAPES = [
    "COPY (SELECT 1) TO '{root}/out.csv'",
    "COPY (SELECT * FROM manifests) TO '{root}/store/manifests/evil.parquet' (FORMAT parquet)",
    "COPY manifests TO '/tmp/l2s-escape.csv'",
    "SELECT * FROM read_parquet('{root}/store/manifests/a.parquet')",
    "SELECT * FROM '{root}/store/manifests/a.parquet'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_blob('{root}/store/l2s-store.json')",
    "SELECT * FROM glob('{root}/*')",
    "SELECT * FROM parquet_metadata('{root}/store/manifests/a.parquet')",
    "ATTACH '{root}/x.duckdb' AS x",
    "ATTACH ':memory:' AS y",
    "DETACH memory",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "PRAGMA enable_profiling",
    "CREATE TABLE t AS SELECT 1",
    "CREATE VIEW manifests2 AS SELECT 1",
    "DROP VIEW samples",
    "INSERT INTO _samples SELECT * FROM _samples",
    "DELETE FROM _manifests",
    "UPDATE _recipes SET name = 'x'",
    "EXPORT DATABASE '{root}/dump'",
    "SELECT 1; COPY (SELECT 1) TO '{root}/two.csv'",
    "CALL pragma_version()",
    "CHECKPOINT",
    "VACUUM",
]


@pytest.mark.parametrize("query", ESCAPES)
def test_every_escape_is_refused_and_the_store_is_unchanged(filled, query):
    tmp_path = os.path.dirname(filled.url)
    before = _snapshot_of_files(tmp_path)
    with pytest.raises(SQLRefusedError, match="SQL refused"):
        filled.sql(query.format(root=tmp_path))
    assert _snapshot_of_files(tmp_path) == before
    assert not os.path.exists("/tmp/l2s-escape.csv")


def test_the_connection_is_locked_even_below_the_statement_check(filled):
    with filled.catalog() as cat:
        for q in ("SET enable_external_access = true", "SELECT * FROM read_csv('/etc/passwd')"):
            with pytest.raises(duckdb.Error):
                cat.con.execute(q)


@pytest.mark.parametrize(
    "where",
    [
        "split = 'train'); COPY (SELECT 1) TO '/tmp/l2s-escape.csv'; SELECT (1",
        "1=1) UNION SELECT sample_id FROM read_csv('/etc/passwd') WHERE (1=1",
        "split = 'train' -- ) and more",
        "split = 'train' /* ) */",
        "split = 'train')",
        "(split = 'train'",
        "split = 'unterminated",
        "sample_id IN (SELECT column0 FROM read_csv('/etc/passwd'))",
        "",
    ],
)
def test_loader_where_fragments_that_escape_are_refused(filled, where):
    before = _snapshot_of_files(filled.url)
    k = Key("r", "p2s", "completion_last", 2)
    with pytest.raises(SQLRefusedError):
        filled.columns((k, k), where=where)
    assert _snapshot_of_files(filled.url) == before
    assert not os.path.exists("/tmp/l2s-escape.csv")


def test_where_fragments_with_quotes_and_parentheses_still_work(filled):
    assert check_where("(split = 'train') AND category IN ('c0', 'c1')")
    assert check_where("query <> 'it''s; (odd'")
    k = Key("r", "p2s", "completion_last", 2)
    ds = filled.columns((k, k), where="split = 'train' AND (category = 'c0' OR category = 'c1')")
    assert ds.num_rows == len([i for i in range(12) if i % 4 and i % 3 in (0, 1)])


def test_sql_errors_name_the_query(filled):
    with pytest.raises(StoreError, match="no_such_table"):
        filled.sql("SELECT * FROM _no_such_table")


def test_catalog_export_writes_a_duckdb_file_with_every_view(filled, tmp_path):
    out = tmp_path / "catalog.duckdb"
    counts = filled.admin.export_catalog(str(out))
    assert counts["manifests"] == 12 and counts["samples"] == 12
    con = duckdb.connect(str(out), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM memberships").fetchone()[0] == 12
        assert con.execute("SELECT snapshot_id FROM l2s_snapshot").fetchone()[0] == filled.snapshot().id
    finally:
        con.close()
    with pytest.raises(StoreError, match="never overwrites"):
        filled.admin.export_catalog(str(out))


def test_select_sample_ids_filters_memberships_joined_with_samples(filled):
    with filled.catalog() as cat:
        ids = cat.select_sample_ids("split = 'train' AND category IN ('c0', 'c1')")
        assert ids == sorted(ids)
        assert ids == [f"s{i:05d}" for i in range(12) if i % 4 and i % 3 in (0, 1)]
        # columns of both views, and subqueries over the other views, are allowed
        assert cat.select_sample_ids("query = 'q5' OR width > 100") == ["s00005"]
        assert len(cat.select_sample_ids("sample_id IN (SELECT sample_id FROM manifests)")) == 12
        assert cat.select_sample_ids("label = 'nobody'") == []
        assert cat.select_sample_ids("query = 'é;' OR query = 'q1'") == ["s00001"]


@pytest.mark.parametrize("where", ["split = 'train';", "split = 'é' -- x", "split = 'train', label = 'yes'",
                                   "split = 'train' ORDER BY 1", "   "])
def test_where_fragments_that_are_not_one_condition_are_refused(filled, where):
    with filled.catalog() as cat:
        with pytest.raises(SQLRefusedError):
            cat.select_sample_ids(where)
    with pytest.raises(SQLRefusedError):
        check_where(where)


def test_a_where_fragment_naming_an_unknown_column_lists_the_columns(filled):
    with filled.catalog() as cat:
        with pytest.raises(StoreError, match="nope") as err:
            cat.select_sample_ids("nope = 1")
    assert "category" in str(err.value) and "image_path" in str(err.value)
    assert not isinstance(err.value, SQLRefusedError)


def test_a_where_fragment_reading_files_is_refused_when_it_runs(filled):
    with filled.catalog() as cat:
        with pytest.raises(SQLRefusedError, match="needs access outside the catalog"):
            cat.select_sample_ids("sample_id IN (SELECT * FROM read_text('/etc/hostname'))")


@pytest.mark.slow  # forks a child
def test_the_statement_check_runs_on_one_parser_connection_per_process_and_a_forked_child_opens_its_own(filled):
    """Store.sql checks a statement before it opens the catalog; that check reuses one parser
    connection (opening one costs ~18 ms) and never the parent's in a forked child."""
    import multiprocessing as mp

    from l2s_data.store import sandbox

    filled.sql("SELECT count(*) AS n FROM samples")
    first = sandbox._parser()
    filled.sql("SELECT count(*) AS n FROM recipes")
    assert sandbox._parser() is first
    with pytest.raises(SQLRefusedError):
        filled.sql("SELECT * FROM read_parquet('x.parquet')")  # still refused on the shared connection

    def child() -> None:
        ok = sandbox._parser() is not first and filled.sql("SELECT count(*) AS n FROM samples").num_rows == 1
        os._exit(0 if ok else 1)

    p = mp.get_context("fork").Process(target=child)
    p.start()
    p.join(60)
    assert p.exitcode == 0
