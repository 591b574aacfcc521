"""The plan: missing keys only, deterministic shard ids, growth computes only new samples."""

from __future__ import annotations

import hashlib

import pytest

from l2s_data.extract.plan import SampleItem, complete_samples, make_plan, part_id
from l2s_data.extract.recipe import ModelIdentity, RecipeRef, local_recipe_id, make_recipes

MODEL = ModelIdentity("f" * 64, "llava", "float32", "eager")
PAIR = (" Is it safe?", "Harmful", "Safe")


def _recipes(behavior=None, **kw):
    args = dict(model=MODEL, hidden_size=64, views=["input", "pos", "neg", "p2s"], input_positions=["prompt_last"],
                pair_positions=["completion_last"], input_layers=[0, 1, 2, 3], pair_layers=[0, 1, 2, 3],
                store_dtype="float16", behavior_spec=behavior or {"pairs": [1]})
    args.update(kw)
    return {k: RecipeRef(r, local_recipe_id(r.spec())) for k, r in make_recipes(**args).items()}


def _items(n, start=0):
    return [SampleItem(hashlib.sha256(str(i).encode()).hexdigest()[:32], f"q{i}", PAIR) for i in range(start, start + n)]


def test_an_empty_store_plans_every_key_with_exact_counts_and_bytes():
    refs = _recipes()
    plan = make_plan(_items(10), refs, complete={}, shard_size=4)
    assert [len(s.items) for s in plan.shards] == [4, 4, 2]
    # input: 1 view x 1 position x 4 layers; pair: 3 views x 1 x 4 -> 16 keys a sample
    assert plan.missing_keys == 10 * 16 == plan.total_keys
    assert plan.bytes == 10 * 16 * 64 * 2
    assert {p.kind for s in plan.shards for p in s.parts} == {"input", "pair"}


def test_shard_ids_are_a_deterministic_hash_of_recipe_and_samples():
    refs = _recipes()
    a = make_plan(_items(10), refs, complete={}, shard_size=4)
    b = make_plan(list(reversed(_items(10))), refs, complete={}, shard_size=4)
    assert [s.shard_id for s in a.shards] == [s.shard_id for s in b.shards]
    part = a.shards[0].parts[0]
    assert part.shard_id == part_id(part.recipe_id, reversed(part.sample_ids))
    other = make_plan(_items(10), _recipes(behavior={"pairs": [2]}), complete={}, shard_size=4)
    pair_ids = lambda p: {x.shard_id for s in p.shards for x in s.parts if x.kind == "pair"}  # noqa: E731
    input_ids = lambda p: {x.shard_id for s in p.shards for x in s.parts if x.kind == "input"}  # noqa: E731
    assert pair_ids(a).isdisjoint(pair_ids(other))
    assert input_ids(a) == input_ids(other)  # the input recipe ignores the behavior


def test_a_complete_store_plans_nothing_and_growth_plans_only_new_samples():
    refs = _recipes()
    old = _items(20)
    done = {k: {i.sample_id for i in old} for k in refs}
    assert make_plan(old, refs, complete=done, shard_size=8).is_empty
    grown = old + _items(2, start=20)
    plan = make_plan(grown, refs, complete=done, shard_size=8)
    assert {i.sample_id for s in plan.shards for i in s.items} == {i.sample_id for i in grown[20:]}
    assert plan.missing_samples == {"input": 2, "pair": 2}


def test_samples_missing_only_one_recipe_get_only_that_part():
    refs = _recipes()
    items = _items(6)
    plan = make_plan(items, refs, complete={"input": {i.sample_id for i in items}}, shard_size=10)
    assert [p.kind for p in plan.shards[0].parts] == ["pair"]
    assert plan.missing_keys == 6 * 12


def test_quarantined_samples_are_skipped_and_counted():
    refs = _recipes()
    items = _items(5)
    bad = {items[0].sample_id}
    plan = make_plan(items, refs, complete={}, shard_size=10, quarantined={"input": bad, "pair": bad})
    assert items[0].sample_id not in plan.shards[0].sample_ids
    assert plan.skipped_quarantined == {"input": 1, "pair": 1}


def test_complete_samples_needs_every_key_of_the_recipe():
    ref = _recipes()["input"]
    rows = [("input", "prompt_last", layer, "a") for layer in range(4)] + [("input", "prompt_last", 0, "b")]
    assert complete_samples(rows, ref) == {"a"}


def test_input_recipe_is_shared_across_behaviors_and_order_of_lists_does_not_matter():
    a = _recipes(behavior={"pairs": [1]})
    b = _recipes(behavior={"pairs": [2]}, views=["p2s", "neg", "pos", "input"], input_layers=[3, 2, 1, 0])
    assert a["input"].recipe_id == b["input"].recipe_id
    assert a["pair"].recipe_id != b["pair"].recipe_id
    assert "behavior" not in a["input"].recipe.spec()
    assert a["pair"].recipe.spec()["behavior"] == {"pairs": [1]}


def test_shard_size_must_be_positive():
    from l2s_data.errors import ConfigError

    with pytest.raises(ConfigError):
        make_plan(_items(1), _recipes(), complete={}, shard_size=0)


def test_jobs_and_shards_pickle_for_remote_workers():
    import pickle

    from l2s_data.extract import ExtractJob, parse_config

    refs = _recipes()
    plan = make_plan(_items(5), refs, complete={}, shard_size=2)
    job = ExtractJob(parse_config({"model": {"path": "m"}, "data": {"path": "d"}, "run": {"store": "s"}}), refs)
    assert pickle.loads(pickle.dumps(job)) == job
    assert pickle.loads(pickle.dumps(plan.shards)) == plan.shards
