"""End-to-end extraction in one process: tiny real LLaVA, real Zarr store, real DuckDB catalog."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from l2s_data.extract import Extraction, ExtractionWorker, parse_config
from l2s_data.extract.recipe import local_recipe_id
from l2s_data.models import ChatInput
from l2s_data.store import Store

N = 13  # one sample per MM-SafetyBench scenario


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from l2s_data.datasets import make_synthetic

    out = tmp_path_factory.mktemp("synthetic-safety")
    make_synthetic("synthetic-safety", out, n=N)
    return out


def _config(model, data, store, **recipe):
    return parse_config({
        "model": {"path": str(model)},
        "data": {"path": str(data)},
        "behavior": recipe.pop("behavior", {"behavior": "safety-llava"}),
        "recipe": {"layers": "all", "store_dtype": "float32", **recipe},
        "run": {"store": str(store), "batch_size": 4, "shard_size": 8},
    }, source="(test)")


@pytest.fixture
def llava(tiny_checkpoint, tiny_adapter):
    return tiny_checkpoint("llava"), tiny_adapter("llava")


def test_a_second_run_of_the_same_config_computes_nothing(llava, data_dir, tmp_path):
    ckpt, adapter = llava
    cfg = _config(ckpt, data_dir, tmp_path / "store")
    first = Extraction(cfg, adapter=adapter).run()
    assert first.computed_samples == N and first.quarantined == 0
    layers = adapter.num_layers
    assert first.written_keys == N * (layers + 3 * layers) == first.plan.total_keys
    store = Store.open(tmp_path / "store")
    for kind, rid in first.recipe_ids.items():
        assert store.snapshot().committed_keys(rid).num_rows == N * (layers if kind == "input" else 3 * layers)

    second = Extraction(cfg, adapter=adapter).run()
    assert second.computed_samples == 0 and second.outcomes == ()
    assert second.plan.missing_keys == 0 and second.recipe_ids == first.recipe_ids


def test_an_interrupted_run_resumes_with_only_the_missing_shards(llava, data_dir, tmp_path):
    ckpt, adapter = llava
    cfg = _config(ckpt, data_dir, tmp_path / "store", views=["input"])
    ex = Extraction(cfg, adapter=adapter)
    store = ex.open_store(create=True)
    refs = {k: type(r)(r.recipe, store.put_recipe(r.recipe.spec())) for k, r in ex.plan().recipes.items()}
    plan = ex.plan(store=store, refs=refs)
    assert len(plan.shards) == 2
    ExtractionWorker(ex.job(refs), adapter=adapter, store=store, dataset=ex.dataset).run_shard(plan.shards[0])
    # "killed" after the first shard: the rerun computes only the other one
    report = Extraction(cfg, adapter=adapter).run()
    assert report.computed_samples == len(plan.shards[1].items) == N - len(plan.shards[0].items)
    assert [s.shard_id for s in report.plan.shards] == [plan.shards[1].shard_id]


def test_growing_the_data_set_by_ten_percent_computes_only_the_new_samples(llava, tmp_path):
    from l2s_data.datasets import make_synthetic, read_dataset

    ckpt, adapter = llava
    small, grown = tmp_path / "d20", tmp_path / "d22"
    make_synthetic("synthetic-safety", small, n=20)
    make_synthetic("synthetic-safety", grown, n=22)
    old_ids, new_ids = set(read_dataset(small).sample_ids), set(read_dataset(grown).sample_ids)
    assert old_ids < new_ids and len(new_ids - old_ids) == 2
    store = tmp_path / "store"
    assert Extraction(_config(ckpt, small, store), adapter=adapter).run().computed_samples == 20
    report = Extraction(_config(ckpt, grown, store), adapter=adapter).run()
    computed = {i.sample_id for s in report.plan.shards for i in s.items}
    assert computed == new_ids - old_ids and report.computed_samples == 2


def test_p2s_is_pos_minus_neg_taken_in_float32_before_the_down_cast(llava, data_dir, tmp_path):
    ckpt, adapter = llava
    layer = adapter.num_layers - 2
    r32 = Extraction(_config(ckpt, data_dir, tmp_path / "s32", layers=[layer]), adapter=adapter).run()
    r16 = Extraction(_config(ckpt, data_dir, tmp_path / "s16", layers=[layer], store_dtype="float16"),
                     adapter=adapter).run()
    s32, s16 = Store.open(tmp_path / "s32").snapshot(), Store.open(tmp_path / "s16").snapshot()
    ids = sorted(Store.open(tmp_path / "s32").snapshot().committed_keys(r32.recipe_ids["pair"])["sample_id"].unique().to_pylist())
    read = lambda snap, rid, view: snap.read(rid, view, "completion_last", layer, ids)  # noqa: E731
    pos, neg, p2s = (read(s32, r32.recipe_ids["pair"], v) for v in ("pos", "neg", "p2s"))
    assert p2s.dtype == np.float32
    np.testing.assert_array_equal(p2s, pos - neg)
    assert np.abs(p2s).max() > 0
    # float16 store: p2s is the float32 difference rounded once, not a difference of rounded rows
    p2s16 = read(s16, r16.recipe_ids["pair"], "p2s")
    np.testing.assert_array_equal(p2s16, (pos - neg).astype(np.float16).astype(np.float32))
    diff16 = read(s16, r16.recipe_ids["pair"], "pos") - read(s16, r16.recipe_ids["pair"], "neg")
    assert np.abs(diff16 - (pos - neg)).max() >= np.abs(p2s16 - (pos - neg)).max()


def test_a_corrupt_image_is_quarantined_and_the_rest_is_stored(llava, data_dir, tmp_path):
    from l2s_data.datasets import read_dataset

    ckpt, adapter = llava
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    ds = read_dataset(data)
    bad = ds.sample_ids[3]
    ds.image_path(bad).write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    cfg = _config(ckpt, data, tmp_path / "store")
    report = Extraction(cfg, adapter=adapter).run()
    assert report.quarantined == 1 and report.computed_samples == N - 1
    store = Store.open(tmp_path / "store")
    errors = store.sql("SELECT recipe_id, sample_id, stage, error_type, message, shard FROM errors").to_pylist()
    assert {e["recipe_id"] for e in errors} == set(report.recipe_ids.values())
    assert all(e["sample_id"] == bad and e["stage"] == "load" and e["error_type"] == "ImageError" for e in errors)
    assert bad in errors[0]["message"] and errors[0]["shard"]
    stored = set(store.snapshot().committed_keys(report.recipe_ids["pair"])["sample_id"].to_pylist())
    assert stored == set(ds.sample_ids) - {bad}
    # the quarantined sample is not retried (and not re-recorded) by a plain rerun
    again = Extraction(cfg, adapter=adapter).run()
    assert again.computed_samples == 0 and again.plan.skipped_quarantined == {"input": 1, "pair": 1}
    assert store.sql("SELECT count(*) AS n FROM errors")["n"][0].as_py() == 2


def test_a_prompt_that_is_too_long_is_quarantined_with_its_reason(llava, data_dir, tmp_path):
    ckpt, adapter = llava
    long_system = "x" * (adapter.max_context + 10)
    cfg = _config(ckpt, data_dir, tmp_path / "store", views=["input"],
                  behavior={"behavior": "safety-llava", "system": long_system})
    report = Extraction(cfg, adapter=adapter).run()
    assert report.computed_samples == 0 and report.quarantined == N
    row = Store.open(tmp_path / "store").sql("SELECT stage, error_type, message FROM errors LIMIT 1").to_pylist()[0]
    assert row["stage"] == "check" and row["error_type"] == "PromptTooLongError" and "context" in row["message"]


def test_the_reference_llava_preset_extracts_at_its_own_positions(llava, data_dir, tmp_path):
    from l2s_data.datasets import read_dataset

    ckpt, adapter = llava
    cfg = parse_config({
        "model": {"path": str(ckpt)}, "data": {"path": str(data_dir), "categories": ["01-Illegal_Activitiy",
                                                                                    "10-Legal_Opinion"]},
        "behavior": {"preset": "reference-llava", "task": "safety"},
        "recipe": {"layers": "1:3", "store_dtype": "float32"},
        "run": {"store": str(tmp_path / "store"), "batch_size": 4},
    })
    ex = Extraction(cfg, adapter=adapter)
    report = ex.run()
    assert ex.recipes["input"].positions == ("user_last",)
    assert ex.recipes["pair"].positions == ("sequence_last",)
    assert any("L* (steer_layer) = 15" in n for n in report.notes)  # the tiny model has 4 layers
    store = Store.open(tmp_path / "store")
    got = store.sql("SELECT DISTINCT view, position FROM manifests ORDER BY view").to_pylist()
    assert {(g["view"], g["position"]) for g in got} == {
        ("input", "user_last"), ("pos", "sequence_last"), ("neg", "sequence_last"), ("p2s", "sequence_last")}
    # the stored input row is the user_last capture of the same sample
    ds = read_dataset(data_dir)
    sid = sorted(set(store.snapshot().committed_keys(report.recipe_ids["input"])["sample_id"].to_pylist()))[0]
    want = adapter.capture([ChatInput(ds.load_image(sid), ds.query(sid))], layers=[2], positions=["user_last"])
    got_row = store.snapshot().read(report.recipe_ids["input"], "input", "user_last", 2, [sid])
    np.testing.assert_allclose(got_row, want[("user_last", 2)].numpy(), rtol=1e-5, atol=1e-5)


def test_dry_run_counts_missing_keys_and_bytes_and_writes_nothing(llava, data_dir, tmp_path):
    ckpt, adapter = llava
    cfg = _config(ckpt, data_dir, tmp_path / "store", store_dtype="float16", layers="0:2")
    dr = Extraction(cfg, adapter=adapter).dry_run(calibrate=True)
    keys = N * (2 + 3 * 2)
    assert dr.plan.missing_keys == keys and dr.plan.bytes == keys * adapter.hidden_size * 2
    assert dr.seconds is not None and dr.seconds > 0 and "samples/s" in dr.calibration
    assert not (tmp_path / "store").exists()
    report = Extraction(cfg, adapter=adapter).run()
    # the dry run's local recipe ids are the store's ids
    assert {k: r.recipe_id for k, r in dr.plan.recipes.items()} == dict(report.recipe_ids)
    after = Extraction(cfg, adapter=adapter).dry_run(calibrate=False)
    assert after.plan.missing_keys == 0 and after.plan.bytes == 0 and after.seconds is None


def test_store_recipe_ids_equal_the_local_hash(tmp_path):
    spec = {"kind": "input", "layers": [0, 1], "model": {"fingerprint": "ab"}, "system": None}
    assert Store.open(tmp_path / "s", create=True).put_recipe(spec) == local_recipe_id(spec)


def _write_toml(path, ckpt, data, store, extra=""):
    path.write_text(f'[model]\npath = "{ckpt}"\n[data]\npath = "{data}"\n[behavior]\nbehavior = "safety-llava"\n'
                    f'[recipe]\nlayers = [1]\n{extra}[run]\nstore = "{store}"\nbatch_size = 8\n')
    return path


def test_the_cli_dry_run_prints_the_numbers_and_a_run_then_finds_nothing_to_do(tiny_checkpoint, data_dir, tmp_path):
    from l2s_data.cli import app

    cfg = _write_toml(tmp_path / "c.toml", tiny_checkpoint("llava"), data_dir, tmp_path / "store")
    runner = CliRunner()
    dry = runner.invoke(app, ["extract", str(cfg), "--dry-run", "--no-calibrate"])
    assert dry.exit_code == 0, dry.output
    assert f"missing keys: {N * 4}" in dry.output and "bytes" in dry.output
    run = runner.invoke(app, ["extract", str(cfg), "--workers", "0"])
    assert run.exit_code == 0, run.output
    assert f"computed {N} sample(s)" in run.output
    again = runner.invoke(app, ["extract", str(cfg)])
    assert again.exit_code == 0 and "nothing to compute" in again.output


def test_the_cli_refuses_a_config_with_an_unknown_key_and_names_it(tiny_checkpoint, data_dir, tmp_path):
    from l2s_data.cli import app

    cfg = _write_toml(tmp_path / "c.toml", tiny_checkpoint("llava"), data_dir, tmp_path / "store",
                      extra="store_dtpye = \"float16\"\n")
    res = CliRunner().invoke(app, ["extract", str(cfg), "--dry-run"])
    assert res.exit_code == 2
    assert "recipe.store_dtpye" in res.output and "unknown key" in res.output
    assert not (tmp_path / "store").exists()


def test_sampled_continuation_extends_the_completions_reproducibly(llava, data_dir, tmp_path):
    ckpt, adapter = llava
    comp = {"max_new_tokens": 3, "do_sample": True, "seed": 7}
    kw = dict(views=["pos", "neg", "p2s"], layers=[1], pair_positions=["completion_mean"])
    runs = [Extraction(_config(ckpt, data_dir, tmp_path / name, completion=comp, **kw), adapter=adapter).run()
            for name in ("a", "b")]
    plain = Extraction(_config(ckpt, data_dir, tmp_path / "plain", **kw), adapter=adapter).run()
    assert runs[0].recipe_ids == runs[1].recipe_ids != plain.recipe_ids  # settings are part of the recipe
    spec = Store.open(tmp_path / "a").recipe(runs[0].recipe_ids["pair"]).spec
    assert spec["completion"] == {**comp, "include_last_generated": False} and "input" not in runs[0].recipe_ids
    read = lambda name, r: Store.open(tmp_path / name).snapshot().read(  # noqa: E731
        r.recipe_ids["pair"], "pos", "completion_mean", 1, sorted(i.sample_id for s in r.plan.shards for i in s.items))
    a, b, p = read("a", runs[0]), read("b", runs[1]), read("plain", plain)
    np.testing.assert_array_equal(a, b)  # same seed, same plan, same device: same tokens
    assert np.abs(a - p).max() > 1e-4   # the mean now covers the generated tokens too


def test_prefetching_the_next_shards_checks_changes_nothing_stored(llava, data_dir, tmp_path):
    ckpt, adapter = llava
    ex = Extraction(_config(ckpt, data_dir, tmp_path / "unused", layers=[1, 3]), adapter=adapter)
    plan = ex.plan()
    got = {}
    for prefetch in (True, False):
        store = Store.open(tmp_path / f"s-{prefetch}", create=True)
        for ref in plan.recipes.values():
            assert store.put_recipe(ref.recipe.spec()) == ref.recipe_id
        w = ExtractionWorker(ex.job(plan.recipes), adapter=adapter, store=store, dataset=ex.dataset, prefetch=prefetch)
        outcomes = w.run(plan.shards)
        assert sum(o.samples for o in outcomes) == N
        snap = store.snapshot()
        got[prefetch] = {(k, key): snap.read(ref.recipe_id, *key, sorted(i.sample_id for i in plan.shards[0].items))
                         for k, ref in plan.recipes.items() for key in ref.recipe.keys()}
    assert got[True].keys() == got[False].keys()
    for key, value in got[True].items():
        np.testing.assert_array_equal(value, got[False][key])


def test_a_qwen2_vl_model_extracts_through_the_same_path(tiny_checkpoint, tiny_adapter, data_dir, tmp_path):
    ckpt, adapter = tiny_checkpoint("qwen2-vl"), tiny_adapter("qwen2-vl")
    cfg = _config(ckpt, data_dir, tmp_path / "store", layers=[0, 2], behavior={"behavior": "safety-qwen"})
    report = Extraction(cfg, adapter=adapter).run()
    assert report.computed_samples == N and report.quarantined == 0
    store = Store.open(tmp_path / "store")
    assert store.recipe(report.recipe_ids["pair"]).spec["model"]["family"] == "qwen2-vl"
    rid = report.recipe_ids["pair"]
    ids = sorted(set(store.snapshot().committed_keys(rid)["sample_id"].to_pylist()))
    snap = store.snapshot()
    pos, neg, p2s = (snap.read(rid, v, "completion_last", 2, ids) for v in ("pos", "neg", "p2s"))
    np.testing.assert_array_equal(p2s, pos - neg)
    assert Extraction(cfg, adapter=adapter).run().computed_samples == 0
