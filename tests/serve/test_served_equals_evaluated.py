"""For the same sample, method, alpha and greedy decoding, the served response is `l2s
evaluate`'s response, token for token (none, Mean-S and L2S on 8 test samples)."""

from __future__ import annotations

import pytest

from l2s_data.datasets import read_dataset
from l2s_data.evaluate.config import parse_config
from l2s_data.evaluate.methods import get_method
from l2s_data.evaluate.run import Evaluation
from l2s_data.serve import parse_serve_config

from .conftest import ALPHA, data_url, serve_config_dict

pytestmark = pytest.mark.slow

METHODS = ("none", "mean-s", "l2s")


def test_served_equals_evaluated_token_for_token(served, client, tiny_adapter):
    world = served.world
    d = serve_config_dict(world)
    d.pop("serve")
    d["steering"]["methods"] = list(METHODS)
    d["data"]["limit"] = 8
    ev = Evaluation(parse_config(d, source="(test)"), adapter=tiny_adapter("llava"))
    ev.run()
    gen = ev.worker().generator
    gen.vectors(get_method("l2s"), [ev.load_item(s) for s in sorted(ev.infos)])
    # the test samples' h_X is not cached: the evaluation prefills it, as the server does per request
    assert set(gen.sources.provenance.values()) == {"prefill"}
    rows = ev.store.sql(f"SELECT method, alpha, sample_id, response FROM evaluations WHERE run_id = '{ev.run_id}'")
    evaluated = {(r["method"], r["sample_id"]): (r["alpha"], r["response"]) for r in rows.to_pylist()}
    ds = read_dataset(world.data)
    ids = sorted(ev.infos)
    assert len(ids) == 8 and len(evaluated) == 24
    max_tokens = ev.config.generation.max_new_tokens
    served_cfg = parse_serve_config(serve_config_dict(world), source="(test)")
    assert served_cfg.default_alpha("l2s") == ALPHA
    differs = 0
    for sid in ids:
        msg = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(ds.image_path(sid))}},
                                            {"type": "text", "text": ds.query(sid)}]}]
        answers = {}
        for m in METHODS:
            r = client.chat.completions.create(model=f"tiny-llava:{m}", messages=msg, max_tokens=max_tokens,
                                               temperature=0, extra_body={"alpha": ALPHA})
            alpha, response = evaluated[(m, sid)]
            assert r.model_extra["l2s"]["alpha"] == alpha
            assert r.choices[0].message.content == response, (m, sid)
            answers[m] = response
        differs += answers["l2s"] != answers["none"] or answers["mean-s"] != answers["none"]
    assert differs > 0  # the comparison covers steered answers, not only the base model's
