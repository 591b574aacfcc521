"""One replica's model and steering: a batch of parsed requests in, one result per request out.

The vectors come from evaluation's own code (:class:`~l2s_data.evaluate.run.Evaluation` builds
the :class:`~l2s_data.evaluate.generation.VectorSources` from the same config sections, and
:class:`~l2s_data.evaluate.generation.SteeredGenerator` computes each method's vectors), with
one difference: a request is no sample of the store, so L2S always reads h_X from an
unsteered prefill of the request itself (at L', before any steering hook is installed).

Each request is encoded once per batch (one image-processor call, the chat template,
tokenisation): the context check, the L2S prefill and the generation all read that encoding.

A batch (what Ray Serve's batching hands over, joined by :mod:`.joined`) mixes methods and
alphas. Row i is steered by ``alpha_i * v_i`` at L* (rows of unsteered methods add nothing), so
every row gets its own vector and alpha in one forward. Greedy rows share one ``generate``
call, made for the largest ``max_tokens`` of the batch and cut per row (a greedy token never
depends on later ones); a sampled row runs alone, so its seed alone decides its tokens.

Faults stay with their row: a row whose prompt does not fit the context is answered with its
error and left out; if the batch's computation still fails, every row is run alone, so one bad
request never fails the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from l2s_data.errors import L2SError, ServeRequestError
from l2s_data.evaluate.generation import EvalItem, SteeredGenerator
from l2s_data.evaluate.methods import get_method
from l2s_data.evaluate.run import Evaluation
from l2s_data.models.encoding import Encoded
from l2s_data.models.families import Vision
from l2s_data.serve.config import ServeConfig
from l2s_data.serve.protocol import ChatRequest

__all__ = ["Engine", "Generated", "TextPieces"]


@dataclass(frozen=True)
class Generated:
    """One request's answer: its token ids and text, the text piece each token added (what a
    stream sends), why it stopped, its prompt's length, and the steering that was applied."""

    token_ids: tuple[int, ...]
    text: str
    pieces: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int
    steering: dict[str, Any]


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Engine:
    """The model, the served methods' vectors, and batched steered generation (module docstring)."""

    def __init__(self, cfg: ServeConfig, *, adapter: Any = None):
        self.cfg = cfg
        ev = Evaluation(cfg.evaluation, adapter=adapter)
        sources = ev.sources()  # Mean-S, Mean-S(BA), the predictor, L*, L': as the evaluation reads them
        sources.cache = None    # a request is not a stored sample: h_X comes from its own prefill
        self.adapter = ev.adapter
        self.generator = SteeredGenerator(self.adapter, sources, max_new_tokens=1)
        self.task = cfg.evaluation.data.task
        self.layer = sources.steer_layer
        self.input_layer = sources.input_layer
        self.model_fingerprint = self.adapter.fingerprint()
        predictor = cfg.evaluation.l2s.predictor
        self.predictor_fingerprint = _file_digest(predictor) if "l2s" in cfg.methods and predictor else None
        self.vector_fingerprints = {
            m: hashlib.sha256(v.float().contiguous().numpy().tobytes()).hexdigest()
            for m, v in (("mean-s", sources.mean_s), ("mean-s-ba", sources.mean_s_ba)) if v is not None}
        self._lock = threading.Lock()
        self._started = time.perf_counter()  # when the batch in progress (or the last one) started
        self.busy_rows = 0
        self.batches = 0

    # --- per-row checks ------------------------------------------------------------------

    def _item(self, req: ChatRequest) -> EvalItem:
        return EvalItem(req.id, req.image, req.query, self.task)

    def _chat(self, req: ChatRequest) -> Any:
        return self.generator.chat_inputs(get_method(req.method), [self._item(req)])[0]

    def encode(self, reqs: Sequence[ChatRequest]) -> list[tuple[Encoded, Vision] | ServeRequestError]:
        """Each request's model input, encoded once for the whole batch (one image-processor
        call; row by row if that call fails, so a bad row gets its own error), or the error that
        says why it cannot be served (it does not encode, or does not fit the context)."""
        out: list[tuple[Encoded, Vision] | ServeRequestError] = []
        try:
            encs, vision = self.adapter.encode_items([self._chat(r) for r in reqs])
            whole: list[tuple[Encoded, Vision]] | None = [(e, vision.select([i])) for i, e in enumerate(encs)]
        except Exception:  # noqa: BLE001 - found row by row below, each with its own error
            whole = None
        for i, r in enumerate(reqs):
            try:
                if whole is not None:
                    enc, vis = whole[i]
                else:
                    (enc,), vis = self.adapter.encode_items([self._chat(r)])
                self.prompt_tokens(r, len(enc))
                out.append((enc, vis))
            except ServeRequestError as err:
                out.append(err)
            except L2SError as err:
                out.append(ServeRequestError(str(err), param="messages"))
            except Exception as err:  # noqa: BLE001 - this row's input, not the others'
                out.append(ServeRequestError(f"the message cannot be encoded for this model: {type(err).__name__}: "
                                             f"{err}", param="messages", code="invalid_input"))
        return out

    def prompt_tokens(self, req: ChatRequest, n: int) -> int:
        """``n``, the request's templated prompt length; :class:`ServeRequestError` if it and
        its ``max_tokens`` do not fit the model's context."""
        ctx = self.adapter.max_context
        if n > ctx:
            raise ServeRequestError(f"the prompt is {n} tokens, more than the model's context of {ctx}; shorten "
                                    f"the message", code="context_length_exceeded", param="messages")
        if n + req.max_tokens > ctx:
            raise ServeRequestError(f"the prompt ({n} tokens) and max_tokens ({req.max_tokens}) need {n + req.max_tokens} "
                                    f"tokens, more than the model's context of {ctx}; ask for at most {ctx - n} tokens",
                                    code="context_length_exceeded", param="max_tokens")
        return n

    def text_pieces(self) -> "TextPieces":
        """A fresh decoder of one streamed response's tokens into text pieces."""
        return TextPieces(self.adapter.processor.tokenizer)

    # --- a batch -------------------------------------------------------------------------

    def run_batch(self, reqs: Sequence[ChatRequest]) -> list[Generated | ServeRequestError]:
        """One result per request, in order: its :class:`Generated` or its error."""
        with self._lock:  # one batch at a time on this replica's model
            self.busy_rows, self.batches = len(reqs), self.batches + 1
            t0 = self._started = time.perf_counter()
            try:
                out = self._run(list(reqs))
            except Exception as err:  # noqa: BLE001 - never an exception for Ray Serve to fail every row with
                return [ServeRequestError(f"the batch failed: {type(err).__name__}: {err}", status=500,
                                          code="generation_failed", type="server_error")] * len(reqs)
            finally:
                self.busy_rows = 0
            took = round(time.perf_counter() - t0, 6)
            for r, g in zip(reqs, out):
                if isinstance(g, Generated):
                    g.steering["timing"]["batch_s"] = took
            return out

    def _run(self, reqs: list[ChatRequest]) -> list[Generated | ServeRequestError]:
        out: list[Generated | ServeRequestError | None] = [None] * len(reqs)
        encoded: dict[int, tuple[Encoded, Vision]] = {}
        for i, e in enumerate(self.encode(reqs)):
            if isinstance(e, ServeRequestError):
                out[i] = e
            else:
                encoded[i] = e
        ok = [i for i in range(len(reqs)) if out[i] is None]
        try:
            for i, g in zip(ok, self._generate([reqs[i] for i in ok], [encoded[i] for i in ok], len(reqs))):
                out[i] = g
        except Exception:  # noqa: BLE001 - isolate the row that broke the batch: each runs alone
            for i in ok:
                try:
                    out[i] = self._generate([reqs[i]], [encoded[i]], len(reqs))[0]
                except L2SError as err:
                    out[i] = ServeRequestError(str(err), param="messages")
                except Exception as err:  # noqa: BLE001 - answered as a server error, the others go on
                    out[i] = ServeRequestError(f"generation failed: {type(err).__name__}: {err}", status=500,
                                               code="generation_failed", type="server_error")
        return out  # type: ignore[return-value]

    def _streaming(self, reqs: list[ChatRequest]) -> Any:
        """The ``on_step`` that hands each streamed row its tokens as they are generated (up to
        its end of sequence and its own ``max_tokens``), or None when no row streams. A row run
        again alone (its batch failed) is handed only the tokens past those it was already sent."""
        if all(r.on_token is None for r in reqs):
            return None
        eos = self.adapter.eos_token_ids
        taken = [0] * len(reqs)
        ended = [r.on_token is None for r in reqs]

        def on_step(tokens: list[int]) -> None:
            for j, (r, t) in enumerate(zip(reqs, tokens)):
                if ended[j]:
                    continue
                if t in eos or taken[j] >= r.max_tokens:
                    ended[j] = True
                    continue
                taken[j] += 1
                if taken[j] > r.streamed:
                    r.streamed += 1
                    r.on_token(t)

        return on_step

    @staticmethod
    def _rows(encoded: list[tuple[Encoded, Vision]], rows: list[int]) -> tuple[list[Encoded], Vision]:
        """The encodings of ``rows``, their images as one :class:`Vision` (what ``encode_items`` returns)."""
        return [encoded[i][0] for i in rows], Vision.concat([encoded[i][1] for i in rows])

    def _generate(self, reqs: list[ChatRequest], encoded: list[tuple[Encoded, Vision]],
                  batch_size: int) -> list[Generated]:
        if not reqs:
            return []
        items = [self._item(r) for r in reqs]
        methods = [get_method(r.method) for r in reqs]
        chats = [self.generator.chat_inputs(m, [it])[0] for m, it in zip(methods, items)]
        deltas = torch.zeros(len(reqs), self.adapter.hidden_size)
        by_method: dict[str, list[int]] = {}
        for i, m in enumerate(methods):
            if m.steers:
                by_method.setdefault(m.name, []).append(i)
        for name, rows in by_method.items():  # every vector before any steering hook
            # Only L2S reads the encodings: its prefill runs on the plain chat, which is the
            # chat it generates from (chat_inputs rewrites the query for prompt-only alone).
            v = self.generator.vectors(get_method(name), [items[i] for i in rows],
                                       encoded=self._rows(encoded, rows) if name == "l2s" else None)
            self.generator.sources.provenance.clear()  # keyed by request id: would only grow here
            for k, i in enumerate(rows):
                # alpha_i * v_i, as evaluation's hook computes alpha * v; the hook's alpha is then 1
                deltas[i] = float(reqs[i].alpha) * v[k]
        groups: list[list[int]] = [[i for i, r in enumerate(reqs) if r.temperature == 0]]
        groups += [[i] for i, r in enumerate(reqs) if r.temperature > 0]
        ids: dict[int, tuple[int, ...]] = {}
        for rows in groups:
            if not rows:
                continue
            sampled = reqs[rows[0]].temperature > 0
            steer = (self.adapter.steering(self.layer, deltas[rows], 1.0) if any(methods[i].steers for i in rows)
                     else contextlib.nullcontext())
            for i in rows:
                if reqs[i].on_token is not None:  # what the stream's chunks say until the batch ends
                    reqs[i].live = self.steering(reqs[i], methods[i], batch_size)
            with steer:
                got = self.adapter.generate_ids(
                    [chats[i] for i in rows], max_new_tokens=max(reqs[i].max_tokens for i in rows),
                    do_sample=sampled, seed=reqs[rows[0]].seed if sampled else None,
                    temperature=reqs[rows[0]].temperature if sampled else None, encoded=self._rows(encoded, rows),
                    on_step=self._streaming([reqs[i] for i in rows]))
            for i, row in zip(rows, got):
                ids[i] = tuple(row[:reqs[i].max_tokens])
        return [self._result(r, m, ids[i], len(encoded[i][0]), batch_size)
                for i, (r, m) in enumerate(zip(reqs, methods))]

    def steering(self, req: ChatRequest, method: Any, batch_size: int) -> dict[str, Any]:
        """What a response says of the steering applied to ``req`` (its ``l2s`` object)."""
        return {
            "method": method.name, "label": method.label, "alpha": req.alpha if method.steers else None,
            "layer": self.layer if method.steers else None,
            "input_layer": self.input_layer if method.name == "l2s" else None,
            "model_fingerprint": self.model_fingerprint,
            "predictor_fingerprint": self.predictor_fingerprint if method.name == "l2s" else None,
            "vector_fingerprint": self.vector_fingerprints.get(method.name),
            "blank_image": req.blank_image, "batch_size": batch_size, "replica_pid": os.getpid(),
            # seconds: reading and parsing the request (filled in by the replica's route), waiting
            # for its batch to start, running the batch (None while it runs)
            "timing": {"parse_s": None, "queued_s": round(self._started - req.received, 6), "batch_s": None},
        }

    def _result(self, req: ChatRequest, method: Any, ids: tuple[int, ...], prompt: int, batch_size: int) -> Generated:
        tok = self.adapter.processor.tokenizer
        text = tok.decode(list(ids), skip_special_tokens=True)
        pieces: list[str] = [text]
        if req.stream:  # the text each token adds, for the stream's chunks
            shown = TextPieces(tok)
            pieces = [p for p in (shown.add(t) for t in ids) if p]
            rest = shown.rest(text)
            # a decode that rewrote earlier text: one piece, so the stream still adds up to it
            pieces = pieces + [rest] if rest is not None else [text]
        finish = "length" if len(ids) >= req.max_tokens else "stop"
        return Generated(ids, text, tuple(pieces), finish, prompt, self.steering(req, method, batch_size))


class TextPieces:
    """The text each token of an answer adds, as a stream sends it: the answer's ids decoded so
    far, less what was shown; a token that ends in half a character adds nothing until the
    character is whole."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.shown = ""

    def add(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.startswith(self.shown) and not text.endswith("\ufffd"):
            piece, self.shown = text[len(self.shown):], text
            return piece
        return ""

    def rest(self, text: str) -> str | None:
        """What ``text`` (the whole answer) adds to what was shown; None if it does not extend it."""
        return text[len(self.shown):] if text.startswith(self.shown) else None
