"""An evaluation encodes each batch (chat template, tokens, image processing) once per method,
and generates every alpha from that encoding: the same responses, a fraction of the work."""

from __future__ import annotations

from l2s_data.evaluate.methods import get_method
from l2s_data.evaluate.run import Evaluation

from .conftest import eval_config


def test_each_batch_is_encoded_once_for_all_alphas_and_answers_as_if_encoded_each_time(world, monkeypatch):
    root, ckpt, adapter = world
    encoded = []
    real = adapter.encode_items
    # every encoding goes through the instance's encode_items, the adapter's own calls included
    monkeypatch.setattr(adapter, "encode_items", lambda items: (encoded.append(len(items)), real(items))[1])
    alphas = [0.0, 2.0, 4.0]
    cfg = eval_config(root, ckpt, steering={"methods": ["l2s", "prompt-only"], "alphas": alphas},
                      generation={"batch_size": 2}, data={"limit": 3}, run={"name": "encode-once"})
    ev = Evaluation(cfg, adapter=adapter)
    assert ev.run().computed_rows == 3 * (len(alphas) + 1)
    # three samples, two methods: each sample encoded once per method (not once per alpha, nor
    # again for L2S's h_X prefill, whose chats are the same plain ones)
    assert sum(encoded) == 3 * 2

    # the responses are those of encoding afresh for every call
    gen = ev.worker().generator
    items = [ev.load_item(s) for s in sorted(ev.infos)[:2]]
    l2s = get_method("l2s")
    enc = gen.encode(l2s, items)
    v = gen.vectors(l2s, items, encoded=enc)
    for alpha in alphas:
        assert gen.generate(l2s, alpha, items, vectors=v, encoded=enc) == gen.generate(l2s, alpha, items)
