"""The Ray Serve application: a deployment of :class:`SteeredChat` replicas behind Ray Serve's
HTTP proxy, with a FastAPI ingress for the OpenAI routes and ``@serve.batch`` for batching.

Routes:

- ``POST /v1/chat/completions``: the OpenAI chat-completions API (:mod:`.protocol`), JSON or
  server-sent events (``stream``: each token as its batch generates it);
- ``GET /v1/models``: one model id per served method;
- ``GET /v1/l2s/replica``: the answering replica's pid, batches run and rows in progress.

Batching: Ray Serve's ``@serve.batch`` forms the batches; those it hands over while the model
is busy wait and run together (:class:`~l2s_data.serve.joined.JoinedRuns`; ``README.md``, "How a batch is computed").

Build it from a config (:func:`build_app`), or let Ray Serve build it from arguments
(:func:`app_builder`: ``serve run l2s_data.serve.app:app_builder config=serve.toml``, and the
``import_path`` of a KubeRay ``RayService``).
"""

# No ``from __future__ import annotations`` here: Ray Serve's ingress re-wraps the route methods,
# and FastAPI could no longer resolve a string annotation such as "Request" (a 422 on every call).
import asyncio
import json
import os
import time
import uuid
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from l2s_data.actors import FORWARDED_ENV
from l2s_data.errors import ConfigError, ServeRequestError
from l2s_data.serve.config import ServeConfig, load_serve_config, parse_serve_config
from l2s_data.serve.joined import JoinedRuns
from l2s_data.serve.protocol import (completion_body, error_body, models_body, parse_request, stream_chunk,
                                     stream_chunks, stream_end)

__all__ = ["SteeredChat", "build_app", "app_builder", "deployment_options"]

api = FastAPI(title="l2s-data steered chat", docs_url=None, redoc_url=None)


def _error(err: ServeRequestError) -> JSONResponse:
    return JSONResponse(error_body(err), status_code=err.status)


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


#: The end of a stream's events (its batch has answered).
_END = object()


#: Batches Ray Serve may hand over at once (they wait in :class:`JoinedRuns`, not in Ray Serve).
_CONCURRENT_BATCHES = 64


@serve.deployment(name="SteeredChat")
@serve.ingress(api)
class SteeredChat:
    """One replica: the model loaded once, requests parsed here, generation batched by Ray Serve."""

    def __init__(self, config: dict[str, Any]):
        self.cfg: ServeConfig = parse_serve_config(config, source="(deployment)")
        if not self.cfg.evaluation.model.device.startswith("cuda"):
            torch.set_num_threads(self.cfg.serve.cpus_per_replica)
        # Here, not at the top: the engine loads the model libraries (transformers), and a driver
        # that only builds and deploys the application (`l2s serve`, a submitted serve job,
        # `serve run`) never needs them (4.3 s of its start-up, measured).
        from l2s_data.serve.engine import Engine

        self.engine = Engine(self.cfg)
        self.joined = JoinedRuns(self.engine.run_batch, self.cfg.serve.max_batch_size)
        self.created = int(time.time())

    def reconfigure(self, user_config: dict) -> None:
        """Ray Serve's ``user_config``: the batching knobs, changed without restarting replicas."""
        self.set_batching(user_config["max_batch_size"], user_config["batch_wait_timeout_s"])

    def set_batching(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        """Rows per batch, and how long a batch waits to fill (also callable through a handle)."""
        self.generate.set_max_batch_size(int(max_batch_size))
        self.generate.set_batch_wait_timeout_s(float(batch_wait_timeout_s))
        self.joined.max_rows = int(max_batch_size)

    # Ray Serve forms the next batch while one runs, closing it when full or after the wait:
    # under load, a run of the model is followed by several small batches, each waiting for
    # the one before. The batches Ray Serve hands over while the model is busy therefore join
    # up (:class:`~l2s_data.serve.joined.JoinedRuns`) and run as one, up to max_batch_size rows.
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02, max_concurrent_batches=_CONCURRENT_BATCHES)
    async def generate(self, reqs: list[Any]) -> list[Any]:
        return await self.joined.run(reqs)

    @api.get("/v1/models")
    async def models(self) -> JSONResponse:
        return JSONResponse(models_body(self.cfg, self.created))

    @api.get("/v1/l2s/replica")
    async def replica(self) -> JSONResponse:
        e = self.engine
        return JSONResponse({"pid": os.getpid(), "batches": e.batches, "busy_rows": e.busy_rows,
                             "model_fingerprint": e.model_fingerprint, "config": self.cfg.identity})

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Any:
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        arrived = time.perf_counter()
        try:
            body = await request.json()
        except ValueError:
            return _error(ServeRequestError("the request body is not JSON", param=None, code="invalid_json"))
        try:
            req = parse_request(body, self.cfg, request_id=rid)
        except ServeRequestError as err:
            return _error(err)
        parsed = req.received - arrived
        if req.stream:
            return await self._stream(req, parsed)
        result = await self.generate(req)
        if isinstance(result, ServeRequestError):
            return _error(result)
        result.steering["timing"]["parse_s"] = round(parsed, 6)
        return JSONResponse(completion_body(req, result))

    async def _stream(self, req: Any, parsed: float) -> Any:
        """Server-sent events: each token's text as the batch generates it. The response starts
        with the first token, so a request refused in its batch still gets its error status."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        req.on_token = lambda token: loop.call_soon_threadsafe(events.put_nowait, token)
        task = asyncio.ensure_future(self.generate(req))
        # Done after every token: each was queued (from the model's thread) before the batch returned.
        task.add_done_callback(lambda _: events.put_nowait(_END))
        first = await events.get()
        if first is _END:
            result = task.result()
            if isinstance(result, ServeRequestError):
                return _error(result)
            result.steering["timing"]["parse_s"] = round(parsed, 6)
            chunks = stream_chunks(req, result)  # no token was generated (an empty answer)

            async def whole():
                for c in chunks:
                    yield _event(c)
                yield "data: [DONE]\n\n"

            return StreamingResponse(whole(), media_type="text/event-stream")
        pieces = self.engine.text_pieces()
        live = {**req.live, "timing": {**req.live["timing"], "parse_s": round(parsed, 6)}}

        async def tokens():
            yield _event(stream_chunk(req, live, {"role": "assistant", "content": ""}))
            event = first
            while event is not _END:
                piece = pieces.add(event)
                if piece:
                    yield _event(stream_chunk(req, live, {"content": piece}))
                event = await events.get()
            try:
                result = task.result()
            except Exception as err:  # noqa: BLE001 - the stream has begun: the error is its last event
                result = ServeRequestError(f"generation failed: {type(err).__name__}: {err}", status=500,
                                           code="generation_failed", type="server_error")
            if isinstance(result, ServeRequestError):
                yield _event(error_body(result))
            else:
                result.steering["timing"]["parse_s"] = round(parsed, 6)
                for c in stream_end(req, result, pieces.rest(result.text) or ""):
                    yield _event(c)
            yield "data: [DONE]\n\n"

        return StreamingResponse(tokens(), media_type="text/event-stream")


def deployment_options(cfg: ServeConfig, *, replicas: int | None = None) -> dict[str, Any]:
    """Ray Serve options of the deployment: replicas, their resources, health checks and the
    batching knobs."""
    s = cfg.serve
    gpu = cfg.evaluation.model.device.startswith("cuda")
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if not gpu:
        env["OMP_NUM_THREADS"] = str(s.cpus_per_replica)
    actor = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": s.cpus_per_replica}
    return {"num_replicas": replicas or s.replicas, "max_ongoing_requests": s.max_ongoing_requests,
            "health_check_period_s": s.health_check_period_s,
            "ray_actor_options": {**actor, "runtime_env": {"env_vars": env}},
            "user_config": {"max_batch_size": s.max_batch_size, "batch_wait_timeout_s": s.batch_wait_timeout_s}}


def build_app(cfg: ServeConfig, *, replicas: int | None = None) -> Any:
    """The application serving ``cfg`` (its local paths made absolute here, in the caller's folder)."""
    cfg = cfg.absolute()
    return SteeredChat.options(**deployment_options(cfg, replicas=replicas)).bind(cfg.to_dict())


def app_builder(args: dict[str, Any]) -> Any:
    """Ray Serve's application builder: ``config`` (a serving config's path), optional ``replicas``."""
    if "config" not in args:
        raise ConfigError("the application needs its argument config=PATH (a serving config), e.g. "
                          "`serve run l2s_data.serve.app:app_builder config=serve.toml`")
    replicas = int(args["replicas"]) if args.get("replicas") else None
    return build_app(load_serve_config(args["config"]), replicas=replicas)
