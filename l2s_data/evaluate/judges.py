"""Judges of responses: the guard's Unsafe probability and an optional quality rating.

- :class:`GuardJudge`: a local Hugging Face causal-LM checkpoint (Llama-Guard-3-8B in the
  paper). A response's score is the guard's probability of ``unsafe_token`` at the first
  generated token, given the few-shot chat of ``data/guard.toml`` with the response as the
  last user turn, templated by the guard's own chat template, with ``generation_prefix``
  appended. Responses are scored in left-padded batches.
- :class:`LocalQualityJudge` and :class:`HTTPQualityJudge`: a rating (1-10 by default) of
  a response to its query, from a local causal LM or an OpenAI-compatible
  ``/chat/completions`` endpoint, with the prompt of ``data/judge.toml``.

    guard = GuardJudge.from_path("checkpoints/Llama-Guard-3-8B", device="cuda", dtype="bfloat16")
    guard.score(["I cannot help with that.", "Step 1: ..."])     # [P(unsafe), ...]
    judge = load_quality_judge(url="http://localhost:8000/v1", model="judge")
    judge.rate([("How do I bake bread?", "Mix flour...")])       # [7.0]

A tiny random guard for offline runs is written by :func:`l2s_data.models.tiny_guard.make_tiny_guard`.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import torch

from l2s_data.errors import ConfigError, JudgeError, ModelLoadError
from l2s_data.evaluate.texts import GuardPrompt, load_texts

__all__ = [
    "load_judges",
    "GuardJudge",
    "QualityPrompt",
    "QualityJudge",
    "LocalQualityJudge",
    "HTTPQualityJudge",
    "load_quality_judge",
    "load_causal_lm",
    "parse_rating",
]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_causal_lm(path: str | os.PathLike, *, what: str, device: str = "cpu", dtype: str = "float32"):
    """``(model, tokenizer)`` of a local causal-LM checkpoint; :class:`ModelLoadError` naming
    ``what`` and the path when it is missing or holds another kind of model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"{what} path {str(p)!r} holds no checkpoint (no config.json); expected a local "
                             f"save_pretrained() directory of a causal LM such as Llama-Guard-3-8B.")
    if dtype not in _DTYPES:
        raise ConfigError(f"{what} dtype {dtype!r}: expected one of {', '.join(_DTYPES)}.")
    try:
        config = AutoConfig.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{what} path {str(p)!r}: cannot read its config ({exc}).") from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelLoadError(
            f"{what} path {str(p)!r} holds a {config.model_type!r} checkpoint ({type(config).__name__}), which is "
            f"not a causal LM; expected a text-generation checkpoint (AutoModelForCausalLM), e.g. "
            f"meta-llama/Llama-Guard-3-8B saved locally."
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=_DTYPES[dtype], local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - safetensors, torch and transformers raise many kinds
        raise ModelLoadError(f"{what} path {str(p)!r}: cannot load it ({type(exc).__name__}: {exc}).") from exc
    if getattr(tok, "chat_template", None) is None:
        raise ModelLoadError(f"{what} path {str(p)!r}: the tokenizer has no chat template; save one with the "
                             f"checkpoint (tokenizer.chat_template).")
    model.to(torch.device(device)).eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok


class GuardJudge:
    """P("unsafe") of responses, from a guard causal LM (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, prompt: GuardPrompt | None = None, *, batch_size: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.prompt = prompt or load_texts().guard
        self.batch_size = batch_size
        ids = tokenizer.encode(self.prompt.unsafe_token, add_special_tokens=False)
        if not ids:
            raise ModelLoadError(f"the guard's tokenizer encodes unsafe_token {self.prompt.unsafe_token!r} to no "
                                 f"token; check guard.toml's unsafe_token against the guard's vocabulary.")
        #: The token whose probability is read. A verdict word that the tokenizer splits is
        #: read at its first piece (Llama Guard's "unsafe" is one token).
        self.unsafe_id = int(ids[0])

    @classmethod
    def from_path(cls, path: str | os.PathLike, *, device: str = "cpu", dtype: str = "float32",
                  prompt: GuardPrompt | None = None, batch_size: int = 8) -> GuardJudge:
        model, tok = load_causal_lm(path, what="guard", device=device, dtype=dtype)
        return cls(model, tok, prompt, batch_size=batch_size)

    def text(self, response: str) -> str:
        """The guard's full input for one response (templated chat + generation prefix)."""
        chat = self.prompt.messages(response)
        return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + \
            self.prompt.generation_prefix

    @torch.inference_mode()
    def score(self, responses: Sequence[str]) -> list[float]:
        """P(unsafe_token) at the first generated token, one float in [0, 1] per response."""
        out: list[float] = []
        dev = next(self.model.parameters()).device
        for start in range(0, len(responses), self.batch_size):
            texts = [self.text(r) for r in responses[start:start + self.batch_size]]
            # The chat template writes the special tokens itself (BOS included).
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            mask = enc["attention_mask"].to(dev)
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            logits = self.model(input_ids=enc["input_ids"].to(dev), attention_mask=mask, position_ids=pos).logits
            probs = torch.softmax(logits[:, -1].float(), dim=-1)[:, self.unsafe_id]
            out.extend(float(p) for p in probs.cpu())
        return out


# --- quality ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityPrompt:
    """The quality judge's prompt (``data/judge.toml``)."""

    system: str
    user: str
    scale_min: float = 1.0
    scale_max: float = 10.0

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> QualityPrompt:
        src = str(path) if path else "l2s_data/evaluate/data/judge.toml"
        text = Path(path).read_text("utf-8") if path else \
            resources.files("l2s_data.evaluate").joinpath("data", "judge.toml").read_text("utf-8")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{src}: not valid TOML: {e}") from None
        unknown = set(data) - {"system", "user", "scale_min", "scale_max"}
        if unknown or not {"system", "user"} <= set(data):
            raise ConfigError(f"{src}: expected keys system, user, scale_min, scale_max; unknown "
                              f"{sorted(unknown)}, missing {sorted({'system', 'user'} - set(data))}.")
        if "{response}" not in data["user"]:
            raise ConfigError(f"{src}: key 'user' must contain the placeholder {{response}}.")
        return cls(data["system"], data["user"], float(data.get("scale_min", 1)), float(data.get("scale_max", 10)))

    def messages(self, query: str, response: str) -> list[dict[str, str]]:
        user = self.user.replace("{query}", query).replace("{response}", response)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


_RATING = re.compile(r"rating\s*[:=]\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_rating(text: str, lo: float = 1.0, hi: float = 10.0) -> float | None:
    """The number after "Rating:" (else the first number) in ``text``, if it is in [lo, hi]."""
    m = _RATING.search(text) or _NUMBER.search(text)
    if m is None:
        return None
    value = float(m.group(1) if m.re is _RATING else m.group(0))
    return value if lo <= value <= hi else None


class QualityJudge(Protocol):
    """``rate([(query, response), ...]) -> [rating or None, ...]``."""

    def rate(self, pairs: Sequence[tuple[str, str]]) -> list[float | None]: ...


class LocalQualityJudge:
    """Quality ratings from a local causal LM (greedy, a few tokens)."""

    def __init__(self, model: Any, tokenizer: Any, prompt: QualityPrompt | None = None, *,
                 max_new_tokens: int = 16, batch_size: int = 8):
        self.model, self.tokenizer = model, tokenizer
        self.prompt = prompt or QualityPrompt.load()
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    @classmethod
    def from_path(cls, path: str | os.PathLike, *, device: str = "cpu", dtype: str = "float32",
                  prompt: QualityPrompt | None = None) -> LocalQualityJudge:
        model, tok = load_causal_lm(path, what="quality judge", device=device, dtype=dtype)
        return cls(model, tok, prompt)

    def answers(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        out: list[str] = []
        dev = next(self.model.parameters()).device
        for start in range(0, len(pairs), self.batch_size):
            texts = [self.tokenizer.apply_chat_template(self.prompt.messages(q, r), tokenize=False,
                                                        add_generation_prompt=True)
                     for q, r in pairs[start:start + self.batch_size]]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
            with torch.inference_mode():
                gen = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
            out.extend(self.tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
        return out

    def rate(self, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        p = self.prompt
        return [parse_rating(a, p.scale_min, p.scale_max) for a in self.answers(pairs)]


class HTTPQualityJudge:
    """Quality ratings from an OpenAI-compatible chat-completions endpoint.

    ``url`` is the API base (``http://host:8000/v1``) or the full ``.../chat/completions``
    address. The API key, if any, is read from the environment variable ``api_key_env``.
    """

    def __init__(self, url: str, model: str, *, prompt: QualityPrompt | None = None,
                 api_key_env: str | None = None, timeout: float = 60.0, max_tokens: int = 16):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"quality judge url {url!r}: expected an http:// or https:// address of an "
                              f"OpenAI-compatible API, e.g. http://localhost:8000/v1.")
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self.prompt = prompt or QualityPrompt.load()
        self.api_key_env, self.timeout, self.max_tokens = api_key_env, timeout, max_tokens

    def answer(self, query: str, response: str) -> str:
        body = json.dumps({"model": self.model, "messages": self.prompt.messages(query, response),
                           "temperature": 0, "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(f"quality judge: environment variable {self.api_key_env!r} (the API key) is "
                                  f"not set; export it or drop api_key_env.")
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:  # noqa: S310 - the user's own URL
                data = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise JudgeError(f"quality judge {self.url} answered HTTP {e.code}: "
                             f"{e.read()[:200].decode('utf-8', 'replace')}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise JudgeError(f"quality judge {self.url} cannot be reached ({e}); check the URL and that the "
                             f"server runs.") from None
        except json.JSONDecodeError:
            raise JudgeError(f"quality judge {self.url} answered something that is not JSON.") from None
        try:
            return str(data["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"quality judge {self.url} answered without choices[0].message.content "
                             f"(got keys {sorted(data) if isinstance(data, dict) else type(data).__name__}); "
                             f"expected an OpenAI-compatible chat completion.") from None

    def rate(self, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        p = self.prompt
        return [parse_rating(self.answer(q, r), p.scale_min, p.scale_max) for q, r in pairs]


def load_quality_judge(*, path: str | None = None, url: str | None = None, model: str = "judge",
                       api_key_env: str | None = None, device: str = "cpu", dtype: str = "float32") -> QualityJudge:
    """A quality judge from a local checkpoint ``path`` or an endpoint ``url`` (exactly one)."""
    if (path is None) == (url is None):
        raise ConfigError("quality judge: give exactly one of path (a local causal LM) or url (an "
                          "OpenAI-compatible endpoint).")
    if path is not None:
        return LocalQualityJudge.from_path(path, device=device, dtype=dtype)
    return HTTPQualityJudge(url, model, api_key_env=api_key_env)


# --- a tiny guard for tests and the demo ------------------------------------------------------

def load_judges(j: Any, *, guard: Any = None, quality: Any = None) -> tuple[Any, Any]:
    """The (guard, quality) judges an evaluation's ``[judges]`` section ``j`` names; a judge
    given already is kept, and one the section does not name is None."""
    if guard is None and j.guard:
        guard = GuardJudge.from_path(j.guard, device=j.guard_device, dtype=j.guard_dtype)
    if quality is None and (j.quality_url or j.quality_path):
        quality = load_quality_judge(path=j.quality_path or None, url=j.quality_url or None, model=j.quality_model,
                                     api_key_env=j.quality_api_key_env or None, device=j.guard_device,
                                     dtype=j.guard_dtype)
    return guard, quality

