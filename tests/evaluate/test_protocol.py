"""An evaluation follows its preset, keeps one scale per method, refuses a position that
disagrees with the predictor, and never computes a P2S live without saying so."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from l2s_data.behaviors import load_preset
from l2s_data.errors import ConfigError
from l2s_data.evaluate.methods import get_method
from l2s_data.evaluate.run import Evaluation
from l2s_data.store import Store

from .conftest import L_PRIME, L_STAR, eval_config


class RecordingAdapter:
    """The real tiny adapter, with every ``generate`` call's keyword arguments recorded as they
    came. It generates at most ``max_tokens`` of the asked ``max_new_tokens`` (the presets ask
    for 100 to 200; the tests read the recorded settings, not the responses)."""

    def __init__(self, adapter, *, max_tokens: int = 2):
        self._adapter = adapter
        self.max_tokens = max_tokens
        self.calls: list[dict] = []

    def generate(self, items, **kw):
        self.calls.append(dict(kw))
        return self._adapter.generate(items, **{**kw, "max_new_tokens": min(kw["max_new_tokens"], self.max_tokens)})

    def __getattr__(self, name):
        return getattr(self._adapter, name)


@pytest.mark.parametrize("preset,task", [("reference-llava", "pope"), ("reference-qwen", "safety")])
def test_a_presets_generation_settings_reach_generate(world, preset, task):
    root, ckpt, adapter = world
    cfg = eval_config(root, ckpt, steering={"methods": ["none", "mean-s"], "layer": L_STAR},
                      generation={"batch_size": 4}, data={"limit": 2}, run={"name": f"preset-{preset}"})
    raw = cfg.to_dict()
    raw["preset"] = preset
    raw["data"]["task"] = task
    del raw["generation"]["max_new_tokens"], raw["generation"]["max_new_tokens_unsteered"]
    del raw["generation"]["do_sample"], raw["steering"]["alphas"], raw["model"]["dtype"]
    from l2s_data.evaluate.config import parse_config

    cfg = parse_config(raw)
    g = load_preset(preset).task(task)
    assert cfg.model.dtype == g.generation.dtype == "float16"
    assert cfg.steering.alphas == [g.alpha]
    assert cfg.steering.layer == L_STAR                       # what the file says wins
    rec = RecordingAdapter(adapter)
    ev = Evaluation(cfg, adapter=rec)
    worker = ev.worker()
    items = [ev.load_item(s) for s in sorted(ev.infos)[:1]]
    worker.generator.generate(get_method("none"), None, items)
    worker.generator.generate(get_method("mean-s"), g.alpha, items)
    unsteered, steered = rec.calls
    assert steered["max_new_tokens"] == g.generation.max_new_tokens
    assert unsteered["max_new_tokens"] == g.generation.max_new_tokens_unsteered
    assert steered["do_sample"] is unsteered["do_sample"] is g.generation.do_sample
    if task == "pope":
        assert (steered["max_new_tokens"], unsteered["max_new_tokens"], steered["do_sample"]) == (128, 100, True)
    else:
        assert (steered["max_new_tokens"], steered["do_sample"], g.alpha) == (200, False, 2.2)


def test_a_pair_position_that_disagrees_with_the_predictor_is_refused(world):
    root, ckpt, adapter = world
    cfg = eval_config(root, ckpt, steering={"methods": ["l2s", "p2s"]}, cache={"pair_position": "sequence_last"})
    with pytest.raises(ConfigError, match=r"\[cache\] pair_position = 'sequence_last', but the L2S predictor was "
                                          r"trained with the target \(pair\) position = 'completion_last'"):
        Evaluation(cfg, adapter=adapter).sources()
    # left out, it is the predictor's
    src = Evaluation(eval_config(root, ckpt, steering={"methods": ["l2s", "p2s"]}), adapter=adapter).sources()
    assert src.pair_position == "completion_last"


def test_a_live_p2s_is_announced_and_recorded_and_strict_refuses_it(world):
    root, ckpt, adapter = world
    over = dict(steering={"methods": ["p2s"], "alphas": [1.0]}, data={"limit": 2},
                cache={"input_recipe": "t-input", "pair_recipe": "", "ba_recipe": ""})
    cfg = eval_config(root, ckpt, run={"name": "live-p2s"}, **over)
    rep = Evaluation(cfg, adapter=adapter).run()
    assert rep.computed_rows == 2
    assert rep.notes and "2 sample(s) had no cached P2S" in rep.notes[0]
    store = Store.open(root / "store")
    row = store.sql("SELECT metrics_json FROM runs WHERE run_id = 'live-p2s'")["metrics_json"].to_pylist()
    assert json.loads(row[0])["live_p2s"] == 2
    raw = cfg.to_dict()
    raw["cache"]["strict"] = True
    raw["run"]["name"] = "live-strict"
    from l2s_data.evaluate.config import parse_config

    with pytest.raises(ConfigError, match=r"2 of 2 evaluated sample\(s\) have no cached P2S .*strict = true"):
        Evaluation(parse_config(raw), adapter=adapter).run()
    n = store.sql("SELECT count(*) AS n FROM evaluations WHERE run_id = 'live-strict'")["n"][0].as_py()
    assert n == 0
    # with the cache named, nothing is live
    cached = eval_config(root, ckpt, steering={"methods": ["p2s"], "alphas": [1.0]}, data={"limit": 2},
                         run={"name": "cached-p2s"})
    assert Evaluation(cached, adapter=adapter).run().notes == ()


def test_one_scale_per_method_offline_and_at_generation(world, tmp_path):
    """With target scaling, Mean-S, P2S* and Norm-Rnd are multiplied by the predictor's
    per-category factors, as the training's offline evaluation scales them."""
    from l2s_data.steer import Predictor, PredictorMeta, save_predictor

    root, ckpt, adapter = world
    store = Store.open(root / "store")

    def rid(name):
        return store.sql(f"SELECT recipe_id FROM recipes WHERE name = '{name}'")["recipe_id"][0].as_py()

    d = adapter.hidden_size
    cats = store.sql("SELECT DISTINCT category FROM memberships")["category"].to_pylist()
    scales = {c: 3.0 for c in cats}
    g = Predictor(d, d, 8)
    meta = PredictorMeta({"recipe": rid("t-input"), "view": "input", "position": "prompt_last", "layer": L_PRIME},
                         {"recipe": rid("t-pair"), "view": "p2s", "position": "completion_last", "layer": L_STAR},
                         d, d, 8, store.snapshot().id, target_scales=scales)
    scaled_path = tmp_path / "scaled.safetensors"
    save_predictor(scaled_path, g, meta)
    methods = ["mean-s", "p2s", "norm-rnd", "l2s"]
    plain = Evaluation(eval_config(root, ckpt, steering={"methods": methods}), adapter=adapter)
    scaled = Evaluation(eval_config(root, ckpt, steering={"methods": methods},
                                    l2s={"predictor": str(scaled_path)}), adapter=adapter)
    a, b = plain.sources(), scaled.sources()
    torch.testing.assert_close(b.mean_s, 3.0 * a.mean_s)
    items = [plain.load_item(s) for s in sorted(plain.infos)[:2]]
    ga, gb = plain.worker().generator, scaled.worker().generator
    for m in ("p2s", "norm-rnd"):
        torch.testing.assert_close(gb.vectors(get_method(m), items), 3.0 * ga.vectors(get_method(m), items))
    # the training's offline Mean-S is the mean of the scaled targets: the same vector
    train_ids = sorted(set(plain._filtered("train")["sample_id"].to_pylist()))
    snap = store.snapshot()
    rows = np.asarray(snap.read(rid("t-pair"), "p2s", "completion_last", L_STAR,
                                [s for s in train_ids if s in snap.index(rid("t-pair"), "p2s", "completion_last", L_STAR)]))
    np.testing.assert_allclose(b.mean_s.numpy(), (3.0 * rows).mean(0), rtol=1e-5)


def test_per_category_pair_positions_of_the_predictor_are_honoured_at_evaluation(world, tmp_path):
    """A predictor trained with one category read at sequence_last: that category's P2S* is
    read (here: computed live, announced) at sequence_last, the others from the cache."""
    from l2s_data.evaluate.pairs import PairPositions
    from l2s_data.models import ContrastiveItem
    from l2s_data.steer import Predictor, PredictorMeta, save_predictor

    root, ckpt, adapter = world
    store = Store.open(root / "store")

    def rid(name):
        return store.sql(f"SELECT recipe_id FROM recipes WHERE name = '{name}'")["recipe_id"][0].as_py()

    d = adapter.hidden_size
    cats = sorted({i.category for i in Evaluation(eval_config(root, ckpt), adapter=adapter).infos.values()})
    assert len(cats) >= 2
    meta = PredictorMeta({"recipe": rid("t-input"), "view": "input", "position": "prompt_last", "layer": L_PRIME},
                         {"recipe": rid("t-pair"), "view": "p2s", "position": "completion_last", "layer": L_STAR},
                         d, d, 8, store.snapshot().id,
                         config={"target": {"position_overrides": {cats[0]: "sequence_last"}}})
    path = tmp_path / "overrides.safetensors"
    save_predictor(path, Predictor(d, d, 8), meta)
    ev = Evaluation(eval_config(root, ckpt, steering={"methods": ["l2s", "p2s"]}, l2s={"predictor": str(path)},
                                run={"name": "overrides"}), adapter=adapter)
    src = ev.sources()
    legal = sorted(s for s, i in ev.infos.items() if i.category == cats[0])
    other = sorted(s for s, i in ev.infos.items() if i.category == cats[1])
    assert legal and other
    assert ev.live_p2s == len(legal)                 # those are not cached at sequence_last
    assert all(src.pair_position_of[s] == "sequence_last" for s in legal)
    items = [ev.load_item(legal[0]), ev.load_item(other[0])]
    gen = ev.worker().generator
    v = gen.vectors(get_method("p2s"), items)
    want = adapter.capture_contrastive([ContrastiveItem(items[0].image, items[0].query, *items[0].pair)],
                                       input_layers=[], input_positions=[], pair_layers=[L_STAR],
                                       pair_positions=["sequence_last"])[("p2s", "sequence_last", L_STAR)]
    torch.testing.assert_close(v[0], want[0].float())
    snap = store.snapshot()
    cached = snap.read(rid("t-pair"), "p2s", "completion_last", L_STAR, [other[0]])
    torch.testing.assert_close(v[1], torch.from_numpy(np.asarray(cached[0], np.float32)))
    assert PairPositions("a", {"c": "b"}).of("c") == "b" and PairPositions("a", {"c": "b"}).of(None) == "a"
