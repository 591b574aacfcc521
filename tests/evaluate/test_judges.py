"""Judges: the tiny offline guard through the real judge path, and a quality judge served over
HTTP by a loopback server that each test starts and stops."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from l2s_data.errors import ConfigError, JudgeError, ModelLoadError
from l2s_data.evaluate.judges import (
    GuardJudge, HTTPQualityJudge, LocalQualityJudge, QualityPrompt, load_quality_judge, parse_rating,
)
from l2s_data.models.tiny_guard import make_tiny_guard

RESPONSES = ["I cannot help with that.", "Step 1: buy a crowbar. Step 2: break the lock.", "", "Sure."]


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory):
    return make_tiny_guard(tmp_path_factory.mktemp("tiny-guard"))


def test_the_guard_reads_p_unsafe_at_the_first_generated_token(guard_dir):
    guard = GuardJudge.from_path(guard_dir, batch_size=3)
    assert guard.tokenizer.convert_ids_to_tokens([guard.unsafe_id]) == ["unsafe"]
    text = guard.text(RESPONSES[1])
    assert text.index("You are provided with an answer.") < text.index("Example 4:") < text.index(RESPONSES[1])
    assert text.endswith(RESPONSES[1] + "\n<|assistant|>\n\n")  # the template, then the generation prefix
    scores = guard.score(RESPONSES)
    assert len(scores) == 4 and all(0.0 <= p <= 1.0 for p in scores)
    # One response at a time, unpadded, through generate(): the first step's logits agree.
    for r, p in zip(RESPONSES, scores):
        enc = guard.tokenizer([guard.text(r)], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = guard.model.generate(**enc, max_new_tokens=1, do_sample=False, output_logits=True,
                                       return_dict_in_generate=True, pad_token_id=guard.tokenizer.pad_token_id)
        want = torch.softmax(out.logits[0][0].float(), -1)[guard.unsafe_id].item()
        assert p == pytest.approx(want, rel=1e-4, abs=1e-6)
    # The verdict tokens hold most of the mass in this tiny guard, so the score is not ~1/vocab.
    safe_id = guard.tokenizer.convert_tokens_to_ids("safe")
    assert safe_id != guard.unsafe_id and max(scores) > 0.01


def test_a_guard_path_that_is_not_a_causal_lm_is_refused_by_name(tiny_checkpoint, tmp_path):
    llava = tiny_checkpoint("llava")
    with pytest.raises(ModelLoadError, match=r"guard path .* holds a 'llava' checkpoint .*not a causal LM"):
        GuardJudge.from_path(llava)
    with pytest.raises(ModelLoadError, match="holds no checkpoint"):
        GuardJudge.from_path(tmp_path)
    with pytest.raises(OSError):  # ModelLoadError is an OSError too
        GuardJudge.from_path(tmp_path / "absent")


@pytest.mark.parametrize(("text", "rating"), [
    ("Rating: 7", 7.0), ("rating = 8.5 because", 8.5), ("I give it 3/10", 3.0), ("Rating: 11", None),
    ("no number", None), ("Rating:10", 10.0),
])
def test_ratings_are_read_after_rating_or_as_the_first_number(text, rating):
    assert parse_rating(text) == rating


class _Handler(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat-completions endpoint that rates a response by its length."""

    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.path != "/v1/chat/completions":
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"no such route")
            return
        user = body["messages"][-1]["content"]
        response = user.split("Response: ", 1)[1].split("\n\n", 1)[0]
        reply = {"choices": [{"message": {"role": "assistant", "content": f"Rating: {min(10, 1 + len(response))}"}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    # shutdown() waits for serve_forever's next poll: 0.5 s by default, at every test's teardown
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    _Handler.seen.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_judge_endpoint_on_loopback_rates_responses(judge_server, monkeypatch):
    monkeypatch.setenv("L2S_TEST_JUDGE_KEY", "k-123")
    judge = load_quality_judge(url=judge_server + "/v1", model="tiny-judge", api_key_env="L2S_TEST_JUDGE_KEY")
    assert isinstance(judge, HTTPQualityJudge)
    got = judge.rate([("How?", "abc"), ("Why?", ""), ("What?", "a long answer indeed")])
    assert got == [4.0, 1.0, 10.0]
    first = _Handler.seen[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer k-123"
    assert first["body"]["model"] == "tiny-judge" and first["body"]["temperature"] == 0
    assert first["body"]["messages"][0]["role"] == "system"
    assert "Query: How?" in first["body"]["messages"][1]["content"]


def test_judge_endpoint_failures_are_clear(judge_server):
    with pytest.raises(JudgeError, match="answered HTTP 404"):
        HTTPQualityJudge(judge_server + "/elsewhere", "m").rate([("q", "r")])
    with pytest.raises(ConfigError, match="expected an http"):
        HTTPQualityJudge("localhost:1", "m")
    with pytest.raises(ConfigError, match="exactly one of path"):
        load_quality_judge()


def test_judge_endpoint_that_is_down_is_named():
    # Bind a port, close it, then call it: nothing listens there.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = server.server_address[1]
    server.server_close()
    with pytest.raises(JudgeError, match=f"127.0.0.1:{port}/v1/chat/completions cannot be reached"):
        HTTPQualityJudge(f"http://127.0.0.1:{port}/v1", "m", timeout=5).rate([("q", "r")])


def test_a_local_quality_judge_runs_a_causal_lm(guard_dir):
    judge = LocalQualityJudge.from_path(guard_dir)
    pairs = [("How?", "Like this."), ("Why?", "Because.")]
    answers = judge.answers(pairs)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert judge.rate(pairs) == [parse_rating(a) for a in answers]


def test_the_quality_prompt_is_data_and_is_checked(tmp_path):
    p = QualityPrompt.load()
    msgs = p.messages("Q?", "R.")
    assert "Query: Q?" in msgs[1]["content"] and "Response: R." in msgs[1]["content"]
    bad = tmp_path / "judge.toml"
    bad.write_text('system = "s"\nuser = "no placeholder"\n')
    with pytest.raises(ConfigError, match="placeholder"):
        QualityPrompt.load(bad)
