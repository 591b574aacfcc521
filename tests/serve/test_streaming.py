"""A stream sends each token's text as the batch generates it: the engine hands a streamed row
its tokens during generation (the tokens it answers, in order, and no more), and the server's
first content chunk leaves before its batch has finished."""

from __future__ import annotations

import json

import httpx
import pytest

from l2s_data.datasets import read_dataset
from l2s_data.serve import parse_serve_config
from l2s_data.serve.engine import Engine, TextPieces
from l2s_data.serve.protocol import parse_request

from .conftest import data_url, serve_config_dict


def _body(world, sid: str, method: str, max_tokens: int, **kw) -> dict:
    ds = read_dataset(world.data)
    return {"model": f"tiny-llava:{method}", "max_tokens": max_tokens, **kw,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(ds.image_path(sid))}},
                {"type": "text", "text": ds.query(sid)}]}]}


def test_the_engine_hands_each_streamed_row_its_tokens_while_generating(serve_world, tiny_adapter):
    cfg = parse_serve_config(serve_config_dict(serve_world), source="(test)")
    engine = Engine(cfg, adapter=tiny_adapter("llava"))
    ids = sorted(read_dataset(serve_world.data).samples["sample_id"].to_pylist())[:3]
    reqs = [parse_request(_body(serve_world, sid, m, n, stream=s), cfg, request_id=f"r{k}")
            for k, (sid, m, n, s) in enumerate([(ids[0], "l2s", 12, True), (ids[1], "none", 3, True),
                                                 (ids[2], "mean-s", 12, False)])]
    got: dict[str, list[int]] = {r.id: [] for r in reqs[:2]}
    live_at_first: dict[str, dict] = {}
    for r in reqs[:2]:
        def on_token(t, r=r):
            if not got[r.id]:
                live_at_first[r.id] = dict(r.live["timing"])
            got[r.id].append(t)
        r.on_token = on_token
    out = engine.run_batch(reqs)
    for r, g in zip(reqs[:2], out[:2]):
        assert got[r.id] == list(g.token_ids) and g.token_ids  # its own tokens, cut at its max_tokens
        assert live_at_first[r.id]["batch_s"] is None and g.steering["timing"]["batch_s"] > 0
        pieces = TextPieces(engine.adapter.processor.tokenizer)
        assert "".join(pieces.add(t) for t in got[r.id]) + pieces.rest(g.text) == g.text
    assert len(got[reqs[1].id]) <= 3
    assert reqs[2].live is None  # a row that does not stream is handed nothing


@pytest.mark.slow
def test_the_first_chunk_of_a_stream_leaves_before_its_batch_ends(served):
    sid = sorted(read_dataset(served.world.data).samples["sample_id"].to_pylist())[0]
    body = _body(served.world, sid, "l2s", 12, stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", f"{served.base_url}/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        events = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
    whole = httpx.post(f"{served.base_url}/chat/completions", json={**body, "stream": False}, timeout=120).json()
    content = [e for e in events if e.get("choices") and e["choices"][0]["delta"].get("content")]
    assert whole["usage"]["completion_tokens"] > 0 and content
    assert "".join(e["choices"][0]["delta"]["content"] for e in content) == whole["choices"][0]["message"]["content"]
    # Sent while the batch ran (its run time is not known yet); the closing chunk knows it.
    assert content[0]["l2s"]["timing"]["batch_s"] is None
    finish = [e for e in events if e.get("choices") and e["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["l2s"]["timing"]["batch_s"] > 0
    assert events[-1]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]
