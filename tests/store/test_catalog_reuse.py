"""Store.sql and Store.catalog reuse a locked catalog while nothing it shows has changed.

Profiled before: the fast suite built 452 catalogs at 35-43 ms each (duckdb.connect alone is
~20 ms), one per ``store.sql`` statement. Reuse is observed through ``catalog_pool.stats()``
(catalogs built and reused), never through time.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading

import duckdb
import pytest

from l2s_data.errors import SQLRefusedError, SQLTimeoutError, StoreError
from l2s_data.store import Store, catalog_pool, sandbox

from .conftest import sample_ids, tables, write_shard

COUNT = "SELECT count(*) AS n FROM manifests"
RUNAWAY = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) AS n FROM r"


@pytest.fixture
def filled(tmp_path) -> Store:
    store = Store.open(tmp_path / "store", create=True)
    rid = store.put_recipe({"r": 1}, name="r")
    ids = sample_ids(8)
    write_shard(store, "a", rid, ids[:4])
    s, m = tables(ids)
    store.put("samples", s, memberships=m)
    store.put("runs", [{"run_id": "run1", "kind": "train", "recipe_ids": [rid], "status": "done", "config_json": "{}"}])
    catalog_pool.clear()
    return store


def _n(store: Store, query: str = COUNT, **kw) -> int:
    return store.sql(query, **kw)["n"][0].as_py()


class Counted:
    """How many catalogs the pool built and reused since it was made."""

    def __init__(self):
        self.start = catalog_pool.stats()

    @property
    def built(self) -> int:
        return catalog_pool.stats().built - self.start.built

    @property
    def reused(self) -> int:
        return catalog_pool.stats().reused - self.start.reused


def test_a_second_statement_on_an_unchanged_store_reuses_the_catalog(filled):
    c = Counted()
    assert _n(filled) == 4
    assert _n(filled, "SELECT count(*) AS n FROM samples") == 8
    with filled.catalog() as cat:
        assert cat.query(COUNT)["n"][0].as_py() == 4
    assert (c.built, c.reused) == (1, 2)
    assert catalog_pool.stats().idle == 1


def _put_samples(store):
    s, m = tables(sample_ids(3, "x"))
    store.put("samples", s)


def _put_memberships(store):
    _, m = tables(sample_ids(3, "y"))
    store.put("memberships", m)


def _put_run(store):
    store.put("runs", [{"run_id": "run2", "kind": "train", "recipe_ids": [], "status": "done", "config_json": "{}"}])


def _put_error(store):
    store.put("errors", [{"stage": "extract", "error_type": "E", "message": "m"}])


def _put_evaluation(store):
    store.put("evaluations", [{"evaluation_id": "e1", "run_id": "run1", "method": "m", "alpha": 1.0,
                               "dataset": "d", "sample_id": "s00000", "response": "r", "scores_json": "{}"}])


def _put_recipe(store):
    store.put_recipe({"r": 2}, name="r2")


def _write_shard(store):
    write_shard(store, "b", store.recipe("r").id, sample_ids(8)[4:])


@pytest.mark.parametrize("commit, query, before, after", [
    (_put_samples, "SELECT count(*) AS n FROM samples", 8, 11),
    (_put_memberships, "SELECT count(*) AS n FROM memberships", 8, 11),
    (_put_run, "SELECT count(*) AS n FROM runs", 1, 2),
    (_put_error, "SELECT count(*) AS n FROM errors", 0, 1),
    (_put_evaluation, "SELECT count(*) AS n FROM evaluations", 0, 1),
    (_put_recipe, "SELECT count(*) AS n FROM recipes", 1, 2),
    (_write_shard, COUNT, 4, 8),
], ids=["samples", "memberships", "runs", "errors", "evaluations", "recipes", "manifest"])
def test_any_commit_gives_the_next_statement_a_catalog_that_sees_it(filled, commit, query, before, after):
    assert _n(filled, query) == before
    assert _n(filled, query) == before  # reused: nothing changed
    c = Counted()
    commit(filled)
    assert _n(filled, query) == after
    assert (c.built, c.reused) == (1, 0)


def test_a_compaction_and_a_delete_give_the_next_statement_a_new_catalog(filled):
    _write_shard(filled)
    assert _n(filled) == 8
    c = Counted()
    assert filled.maintain()[0] == 2  # two loose manifests folded into one part
    assert _n(filled) == 8
    assert c.built == 1
    filled.admin.delete_recipe("r", force=True)  # a tombstone, and the recipe's parts removed
    assert _n(filled) == 0
    assert _n(filled, "SELECT count(*) AS n FROM recipes") == 0
    assert (c.built, c.reused) == (2, 1)


def test_a_recipe_part_deleted_and_registered_again_is_read_afresh(filled):
    """Same part name, other bytes (its created_at): the key holds each part's size, mtime and inode."""
    filled.put_recipe({"gone": 1}, name="g")
    was = filled.sql("SELECT created_at AS t FROM recipes WHERE name = 'g'")["t"][0].as_py()
    filled.admin.delete_recipe("g")
    filled.put_recipe({"gone": 1}, name="g")
    now = filled.sql("SELECT created_at AS t FROM recipes WHERE name = 'g'")["t"][0].as_py()
    assert now > was


def test_a_reused_catalog_never_sees_a_later_snapshot(filled):
    old = filled.snapshot()
    assert _n(filled, snapshot=old) == 4
    _write_shard(filled)
    c = Counted()
    assert _n(filled, snapshot=old) == 4  # the old snapshot's catalog: the same files, reused
    assert _n(filled) == 8  # the store now: a new catalog
    assert (c.built, c.reused) == (1, 1)


def test_different_limits_never_share_a_catalog(filled):
    show = "SELECT current_setting('memory_limit') AS m"
    a = filled.sql(show, memory_limit="1GB")["m"][0].as_py()
    b = filled.sql(show, memory_limit="2GB")["m"][0].as_py()
    c = Counted()
    assert filled.sql(show, memory_limit="1GB")["m"][0].as_py() == a != b
    assert filled.sql(show, memory_limit="1000MB")["m"][0].as_py() == a  # the same bytes: shared
    assert (c.built, c.reused) == (0, 2)


def test_a_reused_catalog_refuses_and_stays_locked_as_a_fresh_one(filled):
    assert _n(filled) == 4
    part = next(p for p in os.listdir(os.path.join(filled.url, "samples")))
    c = Counted()
    for q in (f"SELECT * FROM read_parquet('{filled.url}/samples/{part}')", "SET enable_external_access = true",
              "CREATE TEMP VIEW v AS SELECT 1", "SELECT 1; SELECT 2"):
        with pytest.raises(SQLRefusedError):
            filled.sql(q)
    with filled.catalog() as cat:
        settings = cat.query("SELECT current_setting('enable_external_access') AS e, "
                             "current_setting('lock_configuration') AS l").to_pylist()
        assert settings == [{"e": False, "l": True}]
        with pytest.raises(SQLRefusedError):
            cat.query(f"SELECT * FROM '{filled.url}/samples/{part}'")
    assert c.reused == 1 and c.built == 0


def test_a_closed_catalog_runs_nothing_more_and_a_statement_error_keeps_it_reusable(filled):
    with filled.catalog() as cat:
        with pytest.raises(StoreError, match="no_such_column"):
            cat.query("SELECT no_such_column FROM samples")
    with pytest.raises(StoreError, match="closed"):
        cat.query(COUNT)
    c = Counted()
    assert _n(filled) == 4
    assert c.reused == 1


def test_a_timed_out_statement_closes_its_catalog_instead_of_reusing_it(filled):
    assert _n(filled) == 4
    c = Counted()
    with pytest.raises(SQLTimeoutError):
        filled.sql(RUNAWAY, timeout_s=0.5)  # the reused catalog is interrupted
    assert catalog_pool.stats().idle == 0
    assert _n(filled) == 4
    assert (c.built, c.reused) == (1, 1)


def test_raw_connection_access_and_an_open_stream_close_the_catalog_instead_of_reusing_it(filled):
    with filled.catalog() as cat:
        cat.con.execute("CREATE TEMP VIEW mine AS SELECT 1 AS x")  # trusted code, below the check
    assert catalog_pool.stats().idle == 0
    with filled.catalog() as cat:
        rows = cat.stream("SELECT * FROM samples")  # never closed
        assert rows.schema.names[0] == "sample_id"
    assert catalog_pool.stats().idle == 0
    with filled.catalog() as cat:
        with pytest.raises(duckdb.CatalogException):
            cat.con.execute("SELECT * FROM mine")  # a fresh connection: nothing of the first


def test_a_concurrent_caller_is_not_blocked_by_a_long_statement_and_ctrl_c_discards_it(filled):
    assert _n(filled) == 4  # one idle catalog
    running, second_done = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def on_wait(_elapsed: float) -> None:
        running.set()
        second_done.wait(60)
        raise KeyboardInterrupt  # as Ctrl-C in the waiting thread: interrupts the statement

    def first() -> None:
        with filled.catalog(timeout_s=0) as cat:
            try:
                cat.query(RUNAWAY, on_wait=on_wait)
            except KeyboardInterrupt:
                seen["interrupted"] = True

    t = threading.Thread(target=first)
    t.start()
    assert running.wait(60)
    c = Counted()
    assert _n(filled) == 4  # while the first statement still runs: a catalog of its own
    assert (c.built, c.reused) == (1, 0)
    second_done.set()
    t.join(60)
    assert seen == {"interrupted": True}
    assert catalog_pool.stats().idle == 1  # the second caller's; the interrupted one was closed
    assert catalog_pool.stats().discarded >= c.start.discarded + 1


def test_the_pool_is_bounded(filled):
    for i in range(catalog_pool.MAX_IDLE + 3):
        filled.sql("SELECT 1 AS x", memory_limit=f"{100 + i}MB")
    assert catalog_pool.stats().idle == catalog_pool.MAX_IDLE
    assert catalog_pool.clear() == catalog_pool.MAX_IDLE
    assert catalog_pool.stats().idle == 0


@pytest.mark.slow  # forks a child
def test_a_forked_child_builds_its_own_catalog(filled):
    assert _n(filled) == 4
    assert catalog_pool.stats().idle == 1

    def child() -> None:
        before = catalog_pool.stats()
        ok = before.idle == 0 and _n(filled) == 4 and _n(filled) == 4
        after = catalog_pool.stats()
        os._exit(0 if ok and (after.built - before.built, after.reused - before.reused) == (1, 1) else 1)

    p = mp.get_context("fork").Process(target=child)
    p.start()
    p.join(60)
    assert p.exitcode == 0
    # The parent closed its idle catalogs before the fork (a DuckDB copy cannot be closed in
    # the child), and builds its next one.
    c = Counted()
    assert _n(filled) == 4
    assert c.built == 1


def test_a_statement_checked_once_is_not_parsed_again_and_a_refusal_is_never_kept(filled):
    q = "SELECT count(*) AS n FROM samples WHERE sample_id > ?"
    assert sandbox.parse_one(q) is sandbox.parse_one(q)
    bad = "SELECT * FROM read_parquet('x.parquet')"
    for _ in range(2):
        with pytest.raises(SQLRefusedError):
            filled.sql(bad)
    assert bad not in sandbox._ACCEPTED and q in sandbox._ACCEPTED
