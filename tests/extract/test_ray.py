"""Extraction on real Ray: the session's `ray start --head`, joined by address; tiny real LLaVA.

Every actor runs torch on one thread (num_cpus=1), as the in-process reference does here, and
batches depend on the plan alone, so stores are compared by key and value.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from l2s_data.extract import Extraction, RecipeRef, parse_config
from l2s_data.extract.distributed import run_extraction
from l2s_data.store import Store

N = 13  # one sample per MM-SafetyBench scenario
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from l2s_data.datasets import make_synthetic

    out = tmp_path_factory.mktemp("synthetic-safety")
    make_synthetic("synthetic-safety", out, n=N)
    return out


def _raw(model, data, store, *, shard_size: int = 4, layers="all") -> dict:
    return {
        "model": {"path": str(model)},
        "data": {"path": str(data)},
        "behavior": {"behavior": "safety-llava"},
        "recipe": {"layers": layers, "store_dtype": "float32"},
        "run": {"store": str(store), "batch_size": 2, "shard_size": shard_size},
    }


def _config(model, data, store, **kw):
    return parse_config(_raw(model, data, store, **kw), source="(test)")


def _all_keys(store: Store, rids) -> dict[tuple, np.ndarray]:
    """{(kind, view, position, layer, sample): row} of every committed key of ``rids``."""
    snap = store.snapshot()
    out = {}
    for kind, rid in rids.items():
        t = store.snapshot().committed_keys(rid)
        groups: dict[tuple, list[str]] = {}
        for v, p, layer, s in zip(t["view"].to_pylist(), t["position"].to_pylist(), t["layer"].to_pylist(),
                                  t["sample_id"].to_pylist()):
            groups.setdefault((v, p, layer), []).append(s)
        for (v, p, layer), ids in groups.items():
            rows = snap.read(rid, v, p, layer, ids)
            for s, row in zip(ids, rows):
                out[(kind, v, p, layer, s)] = row
    return out


def _manifest_keys(store: Store) -> list[tuple]:
    m = store.snapshot().rows()
    return list(zip(m["recipe_id"].to_pylist(), m["view"].to_pylist(), m["position"].to_pylist(),
                    m["layer"].to_pylist(), m["sample_id"].to_pylist()))


@pytest.mark.slow
def test_two_actors_store_the_same_keys_and_values_as_the_in_process_run(ray_address, tiny_checkpoint, tiny_adapter,
                                                                          data_dir, tmp_path):
    ckpt = tiny_checkpoint("llava")
    local = run_extraction(Extraction(_config(ckpt, data_dir, tmp_path / "local"), adapter=tiny_adapter("llava")))
    progress = []
    ray_ex = Extraction(_config(ckpt, data_dir, tmp_path / "ray"))
    remote = run_extraction(ray_ex, workers=2, address=ray_address, on_progress=progress.append)
    assert remote.recipe_ids == local.recipe_ids
    assert remote.computed_samples == local.computed_samples == N and remote.quarantined == 0
    want = _all_keys(Store.open(tmp_path / "local"), local.recipe_ids)
    got = _all_keys(Store.open(tmp_path / "ray"), remote.recipe_ids)
    assert set(got) == set(want) and len(got) == local.plan.total_keys
    for k, row in want.items():
        np.testing.assert_array_equal(got[k], row, err_msg=str(k))
    # the progress bar saw every shard and every sample, from two different processes
    last = progress[-1]
    assert (last.shards_done, last.shards_total, last.samples_done, last.failed) == (len(remote.plan.shards),
                                                                                  len(remote.plan.shards), N, 0)
    assert len({p.last.pid for p in progress}) == 2 and last.samples_per_s > 0

    # a second run finds every key: nothing is computed, no actor is started; both runs are rows
    again = run_extraction(Extraction(_config(ckpt, data_dir, tmp_path / "ray")), workers=2, address=ray_address)
    assert again.computed_samples == 0 and again.plan.missing_keys == 0
    rows = Store.open(tmp_path / "ray").sql(
        "SELECT status, workers, devices, samples_computed, keys_written, keys_cached, samples_quarantined, "
        "recipe_ids, samples_per_s, started_at <= ended_at AS ordered, config_json FROM extractions "
        "ORDER BY started_at").to_pylist()
    assert len(rows) == 2
    first, second = rows
    total = remote.plan.total_keys
    assert (first["status"], first["workers"], first["devices"]) == ("completed", 2, ["cpu", "cpu"])
    assert (first["samples_computed"], first["keys_written"], first["keys_cached"]) == (N, total, 0)
    assert (second["samples_computed"], second["keys_written"], second["keys_cached"]) == (0, 0, total)
    assert first["samples_quarantined"] == 0 and first["samples_per_s"] > 0 and first["ordered"]
    assert sorted(first["recipe_ids"]) == sorted(remote.recipe_ids.values())
    assert '"shard_size": 4' in first["config_json"]
    # the in-process run has its row too, with its one device
    local_rows = Store.open(tmp_path / "local").sql("SELECT * FROM _extractions").to_pylist()
    assert [(r["workers"], r["devices"], r["keys_written"]) for r in local_rows] == [(0, ["cpu"], total)]


@pytest.mark.slow
def test_an_actor_killed_mid_run_is_restarted_and_nothing_is_lost_or_duplicated(ray_address, tiny_checkpoint,
                                                                                data_dir, tmp_path):
    ex = Extraction(_config(tiny_checkpoint("llava"), data_dir, tmp_path / "store", shard_size=2, layers=[0]))
    killed: list[int] = []

    def kill_once(p) -> None:
        # The actor that just returned a shard has already been handed the next one by the
        # pool: SIGKILL it while that shard is in flight.
        if not killed and p.last is not None and p.shards_done < p.shards_total - 1:
            killed.append(p.last.pid)
            os.kill(p.last.pid, signal.SIGKILL)

    pids_seen: list[int] = []
    # one actor: a restart is not about parallelism (the pool hands it the next shard as it returns one)
    report = run_extraction(ex, workers=1, address=ray_address, max_task_retries=3,
                            on_progress=lambda p: (pids_seen.append(p.last.pid), kill_once(p)))
    assert killed and report.computed_samples == N
    store = Store.open(tmp_path / "store")
    keys = _manifest_keys(store)
    assert len(keys) == len(set(keys)) == report.plan.total_keys  # nothing lost, nothing duplicated
    assert set(store.snapshot().shards) == {p.shard_id for s in report.plan.shards for p in s.parts}
    row = store.sql("SELECT * FROM _extractions").to_pylist()[0]
    assert row["status"] == "completed" and row["shards_retried"] >= 1
    # the restarted actor is a new process, and it computed the rest of the run
    assert set(pids_seen[pids_seen.index(killed[0]) + 1:]) - {killed[0]}


@pytest.mark.slow
def test_a_killed_driver_leaves_committed_shards_and_the_rerun_computes_only_the_rest(ray_address, tiny_checkpoint,
                                                                                      tiny_adapter, data_dir, tmp_path,
                                                                                      config_toml):
    import psutil

    store = tmp_path / "store"
    raw = _raw(tiny_checkpoint("llava"), data_dir, store, shard_size=1, layers=[0])
    cfg_path = tmp_path / "extract.toml"
    cfg_path.write_text(config_toml(raw))
    # One actor: the pool hands it one shard at a time, so when the driver dies at most one
    # shard is in flight and most of the 13 are left.
    driver = subprocess.Popen([sys.executable, str(REPO / "jobs" / "extract.py"), str(cfg_path), "--workers", "1",
                               "--address", ray_address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=tmp_path)
    actor_pids: list[int] = []
    for line in driver.stdout:
        if line.startswith("worker pid "):
            actor_pids.append(int(line.split()[2]))
        if line.startswith("shard ") and "committed" in line:
            break  # the first shard is committed
    else:
        pytest.fail(f"the driver ended before committing a shard (exit {driver.wait()})")
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    driver.stdout.close()
    # Ray ends the dead driver's actors; wait for that so nothing commits behind the rerun
    psutil.wait_procs([psutil.Process(p) for p in actor_pids if psutil.pid_exists(p)], timeout=120)
    before = set(Store.open(store).snapshot().shards)  # store shards: one per recipe part
    assert before

    ex = Extraction(parse_config(raw, source="(test)"), adapter=tiny_adapter("llava"))
    rerun = run_extraction(ex)
    todo = {p.shard_id for s in rerun.plan.shards for p in s.parts}
    assert todo and todo.isdisjoint(before)  # only what was missing
    assert len(before) + len(todo) == 2 * N  # shard_size 1: an input and a pair part per sample
    assert rerun.computed_samples == len(rerun.plan.shards) < N
    keys = _manifest_keys(Store.open(store))
    assert len(keys) == len(set(keys)) == rerun.plan.total_keys


@pytest.mark.slow
def test_a_shard_failing_on_every_attempt_ends_the_run_with_its_name_and_keeps_the_others(
        ray_address, tiny_checkpoint, tiny_adapter, data_dir, tmp_path, config_toml):
    from typer.testing import CliRunner

    from l2s_data.cli import app

    raw = _raw(tiny_checkpoint("llava"), data_dir, tmp_path / "store", layers=[0])
    ex = Extraction(parse_config(raw, source="(test)"), adapter=tiny_adapter("llava"))
    store = ex.open_store(create=True)
    refs = {k: RecipeRef(r, store.put_recipe(r.spec())) for k, r in ex.recipes.items()}
    shards = ex.plan(store=store, refs=refs).shards
    bad, blocked = shards[1].shard_id, shards[1].parts[0].shard_id
    # A plain file where one of the shard's attempt folders goes: every attempt of that shard
    # fails to write, on any worker, however often it is retried.
    (tmp_path / "store" / "shards").mkdir(parents=True, exist_ok=True)
    (tmp_path / "store" / "shards" / blocked).write_text("in the way")
    cfg = tmp_path / "extract.toml"
    cfg.write_text(config_toml(raw))

    res = CliRunner().invoke(app, ["extract", str(cfg), "--workers", "1", "--address", ray_address,
                                   "--max-retries", "1"])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())  # the console wraps long lines
    assert "ShardFailedError" not in out and f"shard {bad}" in out and "2 attempts" in out
    assert "rerun the same config" in out
    committed = set(Store.open(tmp_path / "store").snapshot().shards)
    others = {p.shard_id for s in shards if s.shard_id != bad for p in s.parts}
    assert others <= committed and blocked not in committed
    row = Store.open(tmp_path / "store").sql("SELECT * FROM _extractions").to_pylist()[0]
    assert row["status"] == "failed" and bad in row["error"] and row["workers"] == 1
    assert row["samples_computed"] == N - len(shards[1].items)  # the failed shard computed nothing that counts


def test_a_failed_run_in_process_is_recorded_in_extractions_with_its_error(tiny_checkpoint, tiny_adapter,
                                                                            data_dir, tmp_path):
    raw = _raw(tiny_checkpoint("llava"), data_dir, tmp_path / "store", layers=[0])
    ex = Extraction(parse_config(raw, source="(test)"), adapter=tiny_adapter("llava"))
    store = ex.open_store(create=True)
    refs = {k: RecipeRef(r, store.put_recipe(r.spec())) for k, r in ex.recipes.items()}
    shards = ex.plan(store=store, refs=refs).shards
    blocked = shards[1].parts[0].shard_id
    (tmp_path / "store" / "shards").mkdir(parents=True, exist_ok=True)
    (tmp_path / "store" / "shards" / blocked).write_text("in the way")  # its attempt folder cannot be made

    from l2s_data.errors import ExtractionError

    with pytest.raises(ExtractionError, match=f"writing shard {shards[1].shard_id}") as err:
        run_extraction(ex)
    rows = Store.open(tmp_path / "store").sql("SELECT * FROM _extractions").to_pylist()
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["status"] == "failed" and row["workers"] == 0 and type(err.value).__name__ in row["error"]
    assert row["samples_computed"] == len(shards[0].items)  # the shard committed before the failure
    assert row["started_at"] <= row["ended_at"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_a_sample_whose_memberships_conflict_is_quarantined_in_both_modes(workers, ray_address, tiny_checkpoint,
                                                                         tiny_adapter, data_dir, tmp_path):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from l2s_data.datasets.tables import MEMBERSHIPS_FILE

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    mem = pq.read_table(data / MEMBERSHIPS_FILE)
    row = mem.slice(0, 1).to_pylist()[0]  # a "refuse" scenario; "10-Legal_Opinion" defers
    assert row["label"] == "refuse"
    row.update(question_id="again/0", category="10-Legal_Opinion", label="defer")
    pq.write_table(pa.concat_tables([mem, pa.Table.from_pylist([row], schema=mem.schema)]), data / MEMBERSHIPS_FILE)

    ex = Extraction(_config(tiny_checkpoint("llava"), data, tmp_path / "store", layers=[0]),
                    adapter=tiny_adapter("llava") if workers == 0 else None)
    report = run_extraction(ex, workers=workers, address=ray_address if workers else None)
    errors = Store.open(tmp_path / "store").sql("SELECT * FROM _errors").to_pylist()
    assert [(e["sample_id"], e["error_type"], e["recipe_id"]) for e in errors] == [
        (row["sample_id"], "ConflictingPairs", report.recipe_ids["pair"])]
    assert "2 different contrastive pairs" in errors[0]["message"]
    assert any("conflicting pairs" in n for n in report.notes)


@pytest.mark.slow
def test_more_workers_than_the_cluster_can_place_is_refused_before_any_actor_starts(ray_address, tiny_checkpoint,
                                                                                     tiny_adapter, data_dir, tmp_path):
    from l2s_data.errors import ConfigError

    ex = Extraction(_config(tiny_checkpoint("llava"), data_dir, tmp_path / "store", layers=[0]),
                    adapter=tiny_adapter("llava"))
    with pytest.raises(ConfigError, match=r"--workers 9 needs 9 CPU\(s\).*cluster has 4; pass --workers 4"):
        run_extraction(ex, workers=9, address=ray_address)
    assert set(Store.open(tmp_path / "store").snapshot().shards) == set()
