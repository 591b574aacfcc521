"""The OpenAI chat-completions wire format: a request body in, a :class:`ChatRequest` out (or a
:class:`~l2s_data.errors.ServeRequestError` with its HTTP status), and the response bodies,
stream chunks and error bodies back.

What a request may hold (anything else the server cannot honour is refused, never ignored):

- ``model``: a served model id (``GET /v1/models``: ``<model>:<method>``), the bare model name
  (the config's default method) or a method name;
- ``messages``: one ``user`` message whose content is a string or a list of ``text`` parts and
  at most one ``image_url`` part, the image a ``data:`` URL (base64) or a local path (``file://``
  URL or absolute path) under the config's ``image_root``. The steering vectors come from a user
  turn without a system message, so ``system`` and ``assistant`` messages are refused;
- ``max_tokens`` (or ``max_completion_tokens``), ``temperature`` (0 or absent: greedy unless the
  config samples), ``seed``, ``stream`` and ``stream_options.include_usage``; ``n`` = 1 only;
- the steering, in the body (the client's ``extra_body``): ``method`` and ``alpha``.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image

from l2s_data.errors import ConfigError, ServeRequestError
from l2s_data.evaluate.methods import METHOD_NAMES, get_method

__all__ = ["ChatRequest", "parse_request", "error_body", "completion_body", "stream_chunk", "stream_chunks",
           "stream_end", "models_body", "BLANK_SIZE"]

#: Side of the gray stand-in image of a text-only request (``text_only = "blank"``).
BLANK_SIZE = 336
_MAX_IMAGE_BYTES = 32 * 2**20


@dataclass
class ChatRequest:
    """One parsed chat request: what the engine generates, and how to answer it."""

    method: str
    alpha: float | None
    query: str
    image: PIL.Image.Image
    max_tokens: int
    temperature: float          # 0 = greedy
    seed: int | None
    model_id: str
    stream: bool = False
    include_usage: bool = False
    blank_image: bool = False
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    #: when this replica parsed it (``time.perf_counter``): its wait for a batch is measured from here
    received: float = field(default_factory=time.perf_counter)
    #: a stream's tokens, as they are generated: called from the model's thread with each token id
    on_token: Callable[[int], None] | None = field(default=None, repr=False, compare=False)
    #: tokens handed to ``on_token`` so far, and the ``l2s`` object its chunks carry meanwhile
    streamed: int = 0
    live: dict[str, Any] | None = field(default=None, repr=False, compare=False)


def _err(message: str, *, param: str | None, code: str = "invalid_value", status: int = 400,
         type: str = "invalid_request_error") -> ServeRequestError:  # noqa: A002
    return ServeRequestError(message, status=status, code=code, param=param, type=type)


def parse_request(body: Any, cfg: Any, *, request_id: str) -> ChatRequest:
    """Validate one request body against the serving config ``cfg`` (:class:`~.config.ServeConfig`)."""
    if not isinstance(body, dict):
        raise _err("the request body must be a JSON object", param=None, code="invalid_type")
    method = _method(body, cfg)
    alpha = _alpha(body, method, cfg)
    query, image, blank = _messages(body.get("messages"), cfg)
    max_tokens = _max_tokens(body, cfg)
    temperature = _number(body, "temperature", 0.0, 2.0)
    if temperature is None:
        g = cfg.evaluation.generation
        temperature = 1.0 if g.do_sample else 0.0
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _err(f"seed = {seed!r} is not an integer", param="seed", code="invalid_type")
    if seed is None and temperature > 0:
        seed = cfg.evaluation.generation.seed
    n = body.get("n", 1)
    if n not in (1, None):
        raise _err(f"n = {n!r}: this server returns one choice per request; send n = 1", param="n")
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p is not None and top_p != 1.0:
        raise _err(f"top_p = {top_p}: this server samples with the checkpoint's own generation settings, as "
                   f"`l2s evaluate` does; leave top_p out or 1", param="top_p")
    if body.get("stop"):
        raise _err("stop sequences are not supported; leave 'stop' out", param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _err(f"stream = {stream!r} is not a boolean", param="stream", code="invalid_type")
    opts = body.get("stream_options") or {}
    include_usage = bool(opts.get("include_usage")) if isinstance(opts, dict) else False
    return ChatRequest(method, alpha, query, image, max_tokens, temperature, seed, cfg.model_id(method),
                       stream=stream, include_usage=include_usage, blank_image=blank, id=request_id)


def _method(body: dict, cfg: Any) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _err("'model' is required: one of the ids GET /v1/models lists", param="model", code="invalid_type")
    ids = cfg.model_ids
    if model in ids:
        from_model = ids[model]
    elif model == cfg.model_name:
        from_model = cfg.default_method
    elif model in cfg.methods:
        from_model = model
    else:
        raise _err(f"the model {model!r} does not exist; this server serves {', '.join(ids)}", param="model",
                   code="model_not_found", status=404, type="not_found_error")
    name = body.get("method")
    if name is None:
        return from_model
    try:
        method = get_method(name).name
    except ConfigError:
        raise _err(f"method {name!r} does not exist; this server serves {', '.join(cfg.methods)} "
                   f"(all methods: {', '.join(METHOD_NAMES)})", param="method", code="invalid_method") from None
    if method not in cfg.methods:
        raise _err(f"method {name!r} is not served here; pick one of {', '.join(cfg.methods)}", param="method",
                   code="invalid_method")
    return method


def _alpha(body: dict, method: str, cfg: Any) -> float | None:
    value = body.get("alpha")
    if value is None:
        return cfg.default_alpha(method)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _err(f"alpha = {value!r} is not a number; send a finite number such as 1.0 or 2.2", param="alpha",
                   code="invalid_type")
    return float(value) if get_method(method).steers else None


def _number(body: dict, key: str, lo: float, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _err(f"{key} = {value!r} is not a number", param=key, code="invalid_type")
    if not lo <= value <= hi:
        raise _err(f"{key} = {value} is outside [{lo:g}, {hi:g}]", param=key)
    return float(value)


def _max_tokens(body: dict, cfg: Any) -> int:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(key)
    if value is None:
        return cfg.default_max_tokens
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(f"{key} = {value!r} is not an integer", param=key, code="invalid_type")
    if value < 1:
        raise _err(f"{key} = {value}: ask for at least 1 token", param=key)
    limit = cfg.serve.max_tokens
    if value > limit:
        raise _err(f"{key} = {value} is more tokens than this server generates for one request ({limit}); "
                   f"ask for {limit} or fewer", param=key)
    return value


def _messages(messages: Any, cfg: Any) -> tuple[str, PIL.Image.Image, bool]:
    if not isinstance(messages, list) or not messages:
        raise _err("'messages' must be a non-empty list", param="messages", code="invalid_type")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") != "user":
            role = m.get("role") if isinstance(m, dict) else None
            raise _err(f"messages[{i}] has role {role!r}: this server answers one user message (the steering "
                       f"vectors come from a user turn without system or earlier turns)", param=f"messages[{i}]",
                       code="unsupported_message")
    if len(messages) != 1:
        raise _err(f"{len(messages)} user messages: send one", param="messages", code="unsupported_message")
    content = messages[0].get("content")
    texts: list[str] = []
    images: list[PIL.Image.Image] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for j, part in enumerate(content):
            where = f"messages[0].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str):
                    raise _err(f"{where}: image_url.url must be a string", param=where, code="invalid_type")
                images.append(_image(url, cfg, where))
            else:
                raise _err(f"{where}: parts of type {kind!r} are not supported; send 'text' and 'image_url' parts",
                           param=where, code="unsupported_content")
    else:
        raise _err("messages[0].content must be a string or a list of parts", param="messages[0].content",
                   code="invalid_type")
    if len(images) > 1:
        raise _err(f"{len(images)} images: the model takes one image per request", param="messages[0].content",
                   code="too_many_images")
    query = "\n".join(texts)
    if not query.strip():
        raise _err("the user message has no text", param="messages[0].content")
    if images:
        return query, images[0], False
    if cfg.serve.text_only == "refuse":
        raise _err("this server needs one image per request (serve.text_only = 'refuse'); add an image_url part",
                   param="messages[0].content", code="image_required")
    return query, PIL.Image.new("RGB", (BLANK_SIZE, BLANK_SIZE), (128, 128, 128)), True


def _image(url: str, cfg: Any, where: str) -> PIL.Image.Image:
    if url.startswith("data:"):
        head, sep, data = url.partition(",")
        if not sep or not head.endswith(";base64"):
            raise _err(f"{where}: a data URL must be base64 ('data:image/png;base64,...')", param=where,
                       code="invalid_image")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise _err(f"{where}: the data URL is not valid base64", param=where, code="invalid_image") from None
        return _decode(raw, where, "the data URL")
    if url.startswith(("http://", "https://")):
        raise _err(f"{where}: remote image URLs are not fetched; send a data URL or a path under the server's "
                   f"image folder", param=where, code="invalid_image")
    path = Path(url.removeprefix("file://"))
    root = cfg.serve.image_root
    if not root:
        raise _err(f"{where}: this server reads no local image paths (serve.image_root is empty); send a data URL",
                   param=where, code="image_path_forbidden", status=403, type="permission_error")
    # Resolved first, so neither '..' nor a link inside the folder reaches outside it.
    real, real_root = path.resolve(), Path(root).resolve()
    if not path.is_absolute() or not real.is_relative_to(real_root):
        raise _err(f"{where}: {url!r} is outside the folder this server reads images from; send a data URL or a "
                   f"path under that folder", param=where, code="image_path_forbidden", status=403,
                   type="permission_error")
    if not real.is_file():
        raise _err(f"{where}: no image file at {url!r}", param=where, code="invalid_image")
    if real.stat().st_size > _MAX_IMAGE_BYTES:
        raise _err(f"{where}: the image is over {_MAX_IMAGE_BYTES >> 20} MiB", param=where, code="invalid_image")
    return _decode(real.read_bytes(), where, repr(url))


def _decode(raw: bytes, where: str, what: str) -> PIL.Image.Image:
    if len(raw) > _MAX_IMAGE_BYTES:
        raise _err(f"{where}: the image is over {_MAX_IMAGE_BYTES >> 20} MiB", param=where, code="invalid_image")
    try:
        with PIL.Image.open(io.BytesIO(raw)) as im:
            return im.convert("RGB")  # decoded now: a truncated file fails here, not in a batch
    except (OSError, PIL.Image.DecompressionBombError, ValueError) as e:
        raise _err(f"{where}: {what} does not decode as an image ({e})", param=where, code="invalid_image") from None


# --- responses -----------------------------------------------------------------------------


def error_body(err: ServeRequestError) -> dict[str, Any]:
    return {"error": {"message": str(err), "type": err.type, "param": err.param, "code": err.code}}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(req: ChatRequest, result: Any) -> dict[str, Any]:
    """The ``chat.completion`` object of a finished request (``result``: :class:`~.engine.Generated`)."""
    return {
        "id": req.id, "object": "chat.completion", "created": req.created, "model": req.model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": _usage(result.prompt_tokens, len(result.token_ids)),
        "l2s": result.steering,
    }


def stream_chunk(req: ChatRequest, steering: dict[str, Any] | None, delta: dict[str, Any],
                 finish: str | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of ``req``'s stream."""
    return {"id": req.id, "object": "chat.completion.chunk", "created": req.created, "model": req.model_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], "l2s": steering}


def stream_end(req: ChatRequest, result: Any, rest: str) -> list[dict[str, Any]]:
    """The last chunks of a stream whose tokens were sent as they came: the text the whole answer
    adds to them (``rest``), the finish reason, then the usage when asked for."""
    out = [stream_chunk(req, result.steering, {"content": rest})] if rest else []
    out.append(stream_chunk(req, result.steering, {}, result.finish_reason))
    if req.include_usage:
        out.append({"id": req.id, "object": "chat.completion.chunk", "created": req.created, "model": req.model_id,
                    "choices": [], "usage": _usage(result.prompt_tokens, len(result.token_ids))})
    return out


def stream_chunks(req: ChatRequest, result: Any) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a finished request: the role, one chunk per token
    (its text as decoded after it), the finish reason, then the usage when asked for."""
    out = [stream_chunk(req, result.steering, {"role": "assistant", "content": ""})]
    out += [stream_chunk(req, result.steering, {"content": piece}) for piece in result.pieces if piece]
    return out + stream_end(req, result, "")


def models_body(cfg: Any, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [
        {"id": mid, "object": "model", "created": created, "owned_by": "l2s-data",
         "l2s": {"method": m, "label": get_method(m).label, "default_alpha": cfg.default_alpha(m)}}
        for mid, m in cfg.model_ids.items()]}
