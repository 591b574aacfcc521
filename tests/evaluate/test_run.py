"""An evaluation run end to end in one process: a real extraction into a real store, the seven
methods, rows committed to `evaluations`, and a rerun that computes only what is missing."""

from __future__ import annotations

import json

import pytest

from l2s_data.datasets.splits import is_validation
from l2s_data.errors import ConfigError
from l2s_data.evaluate.config import load_config
from l2s_data.evaluate.methods import get_method
from l2s_data.evaluate.run import Evaluation, committed_rows
from l2s_data.store import Store

from .conftest import L_STAR, eval_config as _config, save_trained_predictor


class Interrupted(Exception):
    pass


def test_every_method_and_alpha_lands_in_evaluations_and_a_rerun_computes_nothing(world):
    root, ckpt, adapter = world
    cfg = _config(root, ckpt, run={"name": "full"})
    ev = Evaluation(cfg, adapter=adapter)
    n = len(ev.infos)
    assert n >= 2
    report = ev.run()
    assert report.plan.total_rows == n * (2 + 5 * 2) == report.computed_rows
    store = Store.open(root / "store")
    t = store.sql("SELECT method, alpha, count(*) AS n FROM evaluations WHERE run_id = 'full' GROUP BY ALL "
                  "ORDER BY method, alpha")
    got = {(m, a): c for m, a, c in zip(*(t[k].to_pylist() for k in ("method", "alpha", "n")))}
    assert got == {("none", None): n, ("prompt-only", None): n,
                   **{(m, a): n for m in ("mean-s", "mean-s-ba", "norm-rnd", "l2s", "p2s") for a in (0.0, 4.0)}}
    rows = store.sql("SELECT method, alpha, sample_id, response, scores_json FROM evaluations "
                     "WHERE run_id = 'full'").to_pylist()
    by = {(r["method"], r["alpha"], r["sample_id"]): r for r in rows}
    for sid in ev.infos:
        base = by[("none", None, sid)]["response"]
        for m in ("mean-s", "mean-s-ba", "norm-rnd", "l2s", "p2s"):
            assert by[(m, 0.0, sid)]["response"] == base  # alpha 0 is the base model
        scores = json.loads(by[("l2s", 4.0, sid)]["scores_json"])
        assert set(scores) >= {"refusal", "deferral", "desired"}
    assert any(by[("p2s", 4.0, s)]["response"] != by[("none", None, s)]["response"] for s in ev.infos)
    runs = store.sql("SELECT run_id, kind, config_json FROM runs WHERE run_id = 'full'").to_pylist()
    assert runs[0]["kind"] == "evaluate" and json.loads(runs[0]["config_json"])["steering"]["layer"] == L_STAR
    again = Evaluation(cfg, adapter=adapter).run()
    assert again.computed_rows == 0 and again.plan.missing_rows == 0 and again.plan.units == ()


def test_an_interrupted_evaluation_reruns_only_the_missing_rows(world):
    root, ckpt, adapter = world
    cfg = _config(root, ckpt, steering={"methods": ["none", "mean-s", "l2s"], "alphas": [1.0, 2.0]},
                  run={"name": "cut"})
    done: list = []

    def stop_after_three(outcome):
        done.append(outcome)
        if len(done) == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        Evaluation(cfg, adapter=adapter).run(on_done=stop_after_three)
    store = Store.open(root / "store")
    kept = committed_rows(store, "cut")
    assert len(kept) == sum(o.samples for o in done) > 0
    ev = Evaluation(cfg, adapter=adapter)
    n = len(ev.infos)
    plan = ev.plan()
    assert plan.total_rows == n * 5 and plan.missing_rows == n * 5 - len(kept)
    seen = []
    report = ev.run(on_done=seen.append)
    assert report.computed_rows == n * 5 - len(kept)
    # Nothing already committed was generated again.
    redone = {(o.method, o.alpha) for o in seen}
    for m, a in {(m, a) for m, a, _ in kept}:
        if all((m, a, s) in kept for s in ev.infos):
            assert (m, a) not in redone
    assert len(committed_rows(store, "cut")) == n * 5
    dup = store.sql("SELECT method, alpha, sample_id, count(*) AS c FROM evaluations WHERE run_id = 'cut' "
                    "GROUP BY ALL HAVING count(*) > 1")
    assert dup.num_rows == 0


def test_the_run_id_is_the_name_or_a_hash_of_what_changes_results(world):
    root, ckpt, _ = world
    a, b = _config(root, ckpt), _config(root, ckpt, generation={"max_new_tokens": 5})
    assert a.run_id.startswith("eval-") and a.run_id == _config(root, ckpt).run_id != b.run_id
    assert _config(root, ckpt, run={"name": "mine"}).run_id == "mine"
    # More methods or alphas: the same run, so a grown sweep computes only the new rows.
    assert _config(root, ckpt, steering={"alphas": [0.0, 4.0, 8.0], "methods": ["none"]}).run_id == a.run_id
    cut = _config(root, ckpt, run={"unit_size": 2})
    assert cut.run_id == a.run_id  # how the work is cut does not change the rows
    plan = Evaluation(cut).plan()
    assert plan.units and all(len(u.sample_ids) <= 2 for u in plan.units)
    assert sum(len(u.sample_ids) * len(u.alphas) for u in plan.units) == plan.missing_rows == plan.total_rows
    share = sum(is_validation(f"s{i}", 0.5) for i in range(2000)) / 2000
    assert 0.45 < share < 0.55 and not is_validation("s1", 0.0) and is_validation("s1", 1.0)


def test_bad_configs_are_refused_with_the_key_named(world, tmp_path):
    root, ckpt, adapter = world
    with pytest.raises(ConfigError, match="method 'mean-z' does not exist"):
        _config(root, ckpt, steering={"methods": ["none", "mean-z"]})
    with pytest.raises(ConfigError, match=r"steering.alphas\[1\] = 'lots' is not a number"):
        _config(root, ckpt, steering={"alphas": [1.0, "lots"]})
    with pytest.raises(ConfigError, match="steering.method_alphas.l2s = 'x' is not a number"):
        _config(root, ckpt, steering={"method_alphas": {"l2s": "x"}})
    with pytest.raises(ConfigError, match="unknown key 'generation.temperature'"):
        _config(root, ckpt, generation={"temperature": 0.7})
    with pytest.raises(ConfigError, match="L2S needs a trained predictor"):
        Evaluation(_config(root, ckpt, l2s={"predictor": ""}), adapter=adapter).sources()
    with pytest.raises(ConfigError, match="Mean-S\\(BA\\) reads its vector from the cache: set \\[cache\\] ba_recipe"):
        Evaluation(_config(root, ckpt, cache={"ba_recipe": ""}), adapter=adapter).sources()
    with pytest.raises(ConfigError, match=r"\[cache\] pair_recipe = 't-pear' is not a recipe id or name"):
        Evaluation(_config(root, ckpt, cache={"pair_recipe": "t-pear"}), adapter=adapter).sources()
    alien = Store.open(root / "store").put_recipe({"model": {"fingerprint": "f" * 64}, "kind": "pair"},
                                                  name="alien-pair")
    assert alien
    with pytest.raises(ConfigError, match=r"pair_recipe = 'alien-pair' was extracted from a model with fingerprint "
                                          r"ffffffffffff\.\.\., but the evaluated model"):
        Evaluation(_config(root, ckpt, cache={"pair_recipe": "alien-pair"}), adapter=adapter).sources()
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")
    (tmp_path / "bad.toml").write_text('[model]\npath = "x"\n[data]\npath = "y"\n[steering]\nlayer = 1\n'
                                       'alphas = "strong"\n[run]\nstore = "z"\n')
    with pytest.raises(ConfigError, match="steering.alphas = 'strong' is not a number"):
        load_config(tmp_path / "bad.toml")


def test_a_grown_sweep_computes_only_new_alphas_and_a_reused_name_with_other_settings_is_refused(world):
    root, ckpt, adapter = world
    small = _config(root, ckpt, steering={"methods": ["p2s"], "alphas": [1.0]}, run={"name": "grow"})
    first = Evaluation(small, adapter=adapter).run()
    n = first.computed_rows
    grown = _config(root, ckpt, steering={"methods": ["p2s", "none"], "alphas": [1.0, 2.0]}, run={"name": "grow"})
    report = Evaluation(grown, adapter=adapter).run()
    assert report.computed_rows == 2 * n and {(o.method, o.alpha) for o in report.outcomes} == {("p2s", 2.0),
                                                                                                 ("none", None)}
    other = _config(root, ckpt, steering={"methods": ["p2s"], "alphas": [1.0]}, generation={"max_new_tokens": 6},
                    run={"name": "grow"})
    with pytest.raises(ConfigError, match=r"run id 'grow' already names an evaluation .* differs in "
                                          r"\['generation.max_new_tokens'\]"):
        Evaluation(other, adapter=adapter).plan()


def test_l2s_takes_l_prime_position_and_cache_recipe_from_the_predictor_file(world, tmp_path):
    root, ckpt, adapter = world
    path = tmp_path / "trained.safetensors"
    rid_in = save_trained_predictor(path, root / "store", adapter.hidden_size, input_layer=3, steer_layer=L_STAR)
    cfg = _config(root, ckpt, steering={"methods": ["l2s"]}, l2s={"predictor": str(path), "input_layer": None},
                  cache={"input_recipe": ""})
    ev = Evaluation(cfg, adapter=adapter)
    src = ev.sources()
    assert (src.input_layer, src.input_position, src.cache.recipes["input"]) == (3, "prompt_last", rid_in)
    items = [ev.load_item(s) for s in sorted(ev.infos)[:2]]
    gen = ev.worker().generator
    gen.vectors(get_method("l2s"), items)
    assert set(gen.sources.provenance.values()) == {"cache"}  # h_X read from the predictor's own recipe
    with pytest.raises(ConfigError, match=r"\[steering\] layer = 2, but the L2S predictor was trained with L\* = 1"):
        Evaluation(_config(root, ckpt, steering={"layer": 2, "methods": ["l2s"]},
                           l2s={"predictor": str(path), "input_layer": None}), adapter=adapter).sources()
    with pytest.raises(ConfigError, match=r"\[l2s\] input_layer = 2, but the L2S predictor was trained with L' = 3"):
        Evaluation(_config(root, ckpt, steering={"methods": ["l2s"]}, l2s={"predictor": str(path), "input_layer": 2}),
                   adapter=adapter).sources()
