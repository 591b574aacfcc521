"""The official openai client against the served tiny LLaVA on loopback: the model list, a text
request, an image request (data URL and local path), streaming, and every served method."""

from __future__ import annotations

import httpx
import pytest

from .conftest import ALPHA, L_PRIME, L_STAR, data_url

pytestmark = pytest.mark.slow


def _image_message(path, query="What is shown here?", *, as_path=False):
    url = str(path) if as_path else data_url(path)
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": query}]}]


def _first_image(served):
    from l2s_data.datasets import read_dataset

    ds = read_dataset(served.world.data)
    sid = sorted(ds.samples["sample_id"].to_pylist())[0]
    return ds.image_path(sid)


def test_models_lists_one_id_per_served_method(client, served):
    ids = [m.id for m in client.models.list().data]
    assert ids == [f"tiny-llava:{m}" for m in ("none", "prompt-only", "mean-s", "l2s")]
    assert served.cfg.methods == ("none", "prompt-only", "mean-s", "l2s")


def test_a_text_request_is_answered_with_its_steering_and_fingerprints(client, served):
    r = client.chat.completions.create(model="tiny-llava", messages=[{"role": "user", "content": "Hello there"}],
                                       max_tokens=5)
    assert r.object == "chat.completion" and r.model == "tiny-llava:l2s"  # the bare name: the default method
    assert r.choices[0].message.role == "assistant" and isinstance(r.choices[0].message.content, str)
    assert 1 <= r.usage.completion_tokens <= 5 and r.usage.prompt_tokens > 0
    s = r.model_extra["l2s"]
    assert (s["method"], s["alpha"], s["layer"], s["input_layer"]) == ("l2s", ALPHA, L_STAR, L_PRIME)
    assert s["blank_image"] is True  # a text-only request: the gray stand-in image
    from l2s_data.models import load_adapter

    assert s["model_fingerprint"] == load_adapter(served.world.checkpoint).fingerprint()
    import hashlib

    assert s["predictor_fingerprint"] == hashlib.sha256(served.world.predictor.read_bytes()).hexdigest()


def test_an_image_request_by_data_url_and_by_path_under_the_image_root_answer_alike(client, served):
    path = _first_image(served)
    a = client.chat.completions.create(model="tiny-llava:none", messages=_image_message(path), max_tokens=6)
    b = client.chat.completions.create(model="tiny-llava:none", messages=_image_message(path, as_path=True),
                                       max_tokens=6)
    c = client.chat.completions.create(model="tiny-llava:none", messages=_image_message(f"file://{path}", as_path=True),
                                       max_tokens=6)
    assert a.choices[0].message.content == b.choices[0].message.content == c.choices[0].message.content
    assert a.model_extra["l2s"]["blank_image"] is False
    assert a.model_extra["l2s"]["alpha"] is None and a.model_extra["l2s"]["predictor_fingerprint"] is None


def test_streaming_sends_the_same_text_as_server_sent_events(client, served):
    path = _first_image(served)
    kw = dict(model="tiny-llava:l2s", messages=_image_message(path), max_tokens=8)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 8
    with httpx.stream("POST", f"{served.base_url}/chat/completions", json={**kw, "stream": True}, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)


def test_each_method_by_model_id_or_extra_body_and_steering_changes_the_answer(client, served):
    path = _first_image(served)
    out = {}
    for m in ("none", "prompt-only", "mean-s", "l2s"):
        by_id = client.chat.completions.create(model=f"tiny-llava:{m}", messages=_image_message(path), max_tokens=8)
        by_body = client.chat.completions.create(model="tiny-llava", messages=_image_message(path), max_tokens=8,
                                                 extra_body={"method": m, "alpha": ALPHA})
        assert by_id.choices[0].message.content == by_body.choices[0].message.content
        assert by_body.model_extra["l2s"]["method"] == m
        out[m] = by_id
    assert out["mean-s"].model_extra["l2s"]["vector_fingerprint"]
    # alpha 0 adds nothing: L2S at alpha 0 is the base model, token for token
    zero = client.chat.completions.create(model="tiny-llava:l2s", messages=_image_message(path), max_tokens=8,
                                          extra_body={"alpha": 0})
    assert zero.choices[0].message.content == out["none"].choices[0].message.content
    assert zero.model_extra["l2s"]["alpha"] == 0.0
    texts = {m: r.choices[0].message.content for m, r in out.items()}
    assert texts["mean-s"] != texts["none"] or texts["l2s"] != texts["none"]  # alpha 4 steers the tiny model


def test_seeded_sampling_repeats_and_differs_from_another_seed(client, served):
    path = _first_image(served)
    kw = dict(model="tiny-llava:l2s", messages=_image_message(path), max_tokens=12, temperature=1.5)
    a = [client.chat.completions.create(**kw, seed=s).choices[0].message.content for s in (1, 1, 2, 3)]
    assert a[0] == a[1]
    assert len(set(a[1:])) > 1
