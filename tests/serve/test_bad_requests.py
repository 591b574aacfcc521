"""Every bad request gets an OpenAI-style error body with its status, and one bad request in a
batch leaves the others answered."""

from __future__ import annotations

import base64
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from .conftest import data_url

pytestmark = pytest.mark.slow


def _post(served, body):
    return httpx.post(f"{served.base_url}/chat/completions", json=body, timeout=120)


def _msg(query="What is shown here?", url=None):
    content = [{"type": "text", "text": query}]
    if url is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": url}})
    return [{"role": "user", "content": content}]


def _png(path, color=(200, 10, 10)):
    Image.new("RGB", (32, 24), color).save(path)
    return path


def _assert_error(r, status, code, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code and err["message"]
    if param is not None:
        assert err["param"] == param
    return err


def test_unknown_method_model_and_unserved_method_are_refused(served):
    err = _assert_error(_post(served, {"model": "tiny-llava", "messages": _msg(), "method": "bogus"}), 400,
                        "invalid_method", "method")
    assert "l2s" in err["message"]  # names what is served
    _assert_error(_post(served, {"model": "tiny-llava", "messages": _msg(), "method": "p2s"}), 400, "invalid_method")
    err = _assert_error(_post(served, {"model": "gpt-4o", "messages": _msg()}), 404, "model_not_found", "model")
    assert err["type"] == "not_found_error"


@pytest.mark.parametrize("alpha", ["strong", True, [1.0], {"x": 1}])
def test_an_alpha_that_is_not_a_number_is_refused(served, alpha):
    err = _assert_error(_post(served, {"model": "tiny-llava:l2s", "messages": _msg(), "alpha": alpha}), 400,
                        "invalid_type", "alpha")
    assert "not a number" in err["message"]


def test_an_image_that_does_not_decode_is_refused(served, tmp_path):
    bad = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n but no image").decode()
    err = _assert_error(_post(served, {"model": "tiny-llava", "messages": _msg(url=bad)}), 400, "invalid_image")
    assert "does not decode" in err["message"]
    _assert_error(_post(served, {"model": "tiny-llava", "messages": _msg(url="data:image/png;base64,@@@")}), 400,
                  "invalid_image")
    broken = served.world.data / "broken.png"  # a file under the image root that is no image
    broken.write_bytes(b"not an image")
    try:
        _assert_error(_post(served, {"model": "tiny-llava", "messages": _msg(url=str(broken))}), 400, "invalid_image")
    finally:
        broken.unlink()


def test_an_image_path_outside_the_allowed_folder_is_refused(served, tmp_path):
    outside = _png(tmp_path / "outside.png")
    link = served.world.data / "link-out.png"
    os.symlink(outside, link)  # inside the folder by name, outside by target
    try:
        for url in (str(outside), f"file://{outside}", str(served.world.data / ".." / "outside.png"), str(link),
                    "relative/image.png"):
            err = _assert_error(_post(served, {"model": "tiny-llava", "messages": _msg(url=url)}), 403,
                                "image_path_forbidden")
            assert err["type"] == "permission_error"
    finally:
        link.unlink()
    assert outside.read_bytes()  # refused, and left alone


def test_a_prompt_past_the_context_and_too_many_tokens_are_refused(served):
    long = "word " * 1500  # past the tiny model's 1024 positions
    err = _assert_error(_post(served, {"model": "tiny-llava", "messages": _msg(long)}), 400, "context_length_exceeded",
                        "messages")
    assert "1024" in err["message"]
    # A prompt that fits alone, not with 64 more tokens: its length measured from two that fit.
    ctx = 1024
    p = {k: _post(served, {"model": "tiny-llava:none", "messages": _msg("word " * k), "max_tokens": 1}).json()
         ["usage"]["prompt_tokens"] for k in (100, 200)}
    per_word = (p[200] - p[100]) / 100
    k = 100 + int((ctx - 32 - p[100]) / per_word)
    fits = _post(served, {"model": "tiny-llava:none", "messages": _msg("word " * k), "max_tokens": 1})
    assert ctx - 64 < fits.json()["usage"]["prompt_tokens"] < ctx
    _assert_error(_post(served, {"model": "tiny-llava", "messages": _msg("word " * k), "max_tokens": 64}), 400,
                  "context_length_exceeded", "max_tokens")
    err = _assert_error(_post(served, {"model": "tiny-llava", "messages": _msg(), "max_tokens": 10_000}), 400,
                        "invalid_value", "max_tokens")
    assert "64" in err["message"]  # the server's limit, serve.max_tokens
    _assert_error(_post(served, {"model": "tiny-llava", "messages": _msg(), "max_tokens": "many"}), 400,
                  "invalid_type", "max_tokens")


def test_malformed_bodies_and_unsupported_messages_are_refused(served):
    r = httpx.post(f"{served.base_url}/chat/completions", content=b"{not json", timeout=60,
                   headers={"content-type": "application/json"})
    _assert_error(r, 400, "invalid_json")
    _assert_error(_post(served, {"model": "tiny-llava"}), 400, "invalid_type", "messages")
    _assert_error(_post(served, {"model": "tiny-llava", "messages": [{"role": "system", "content": "x"}] + _msg()}),
                  400, "unsupported_message")
    two = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(_any_image(served))}}] * 2
            + [{"type": "text", "text": "hi"}]}]
    _assert_error(_post(served, {"model": "tiny-llava", "messages": two}), 400, "too_many_images")
    _assert_error(_post(served, {"model": "tiny-llava", "messages": _msg(), "n": 2}), 400, "invalid_value", "n")
    _assert_error(_post(served, {"model": "tiny-llava", "messages": _msg(), "temperature": 9}), 400, "invalid_value",
                  "temperature")


def _any_image(served):
    return next(p for p in sorted(served.world.data.rglob("*.png")))


def test_the_openai_client_raises_the_matching_errors(client):
    import openai  # here: its import (~1 s) would be paid by every worker that collects this file

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=_msg())
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-llava", messages=_msg(), extra_body={"alpha": "x"})
    assert e.value.code == "invalid_type" and e.value.param == "alpha"
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="tiny-llava", messages=_msg(url="/etc/hostname"))


def test_a_batch_with_one_bad_request_answers_the_others(served, client):
    from ray import serve

    handle = serve.get_app_handle(served.app_name)
    good = [_msg(q) for q in ("What is shown here?", "Is it safe?", "Tell me more.", "Describe it.")]
    methods = ["none", "mean-s", "l2s", "prompt-only"]
    alone = [client.chat.completions.create(model=f"tiny-llava:{m}", messages=g, max_tokens=6)
             for m, g in zip(methods, good)]
    # The next batch runs when 5 rows have arrived (the wait is only a bound), so all 5 share it.
    handle.set_batching.remote(5, 60.0).result()
    try:
        bodies = [{"model": f"tiny-llava:{m}", "messages": g, "max_tokens": 6} for m, g in zip(methods, good)]
        bodies.insert(2, {"model": "tiny-llava:l2s", "messages": _msg("word " * 1500), "max_tokens": 6})
        with ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(lambda b: _post(served, b), bodies))
    finally:
        c = served.cfg.serve
        handle.set_batching.remote(c.max_batch_size, c.batch_wait_timeout_s).result()
    bad = answers.pop(2)
    _assert_error(bad, 400, "context_length_exceeded")
    for r, a in zip(answers, alone):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["l2s"]["batch_size"] == 5  # answered from the batch that held the bad request
        assert body["l2s"]["method"] == a.model_extra["l2s"]["method"]
        assert isinstance(body["choices"][0]["message"]["content"], str)
