"""The serving config: an evaluation config plus a ``[serve]`` section.

Every section but ``[serve]`` is an evaluation config (:mod:`l2s_data.evaluate.config`), read
exactly as ``l2s evaluate`` reads it: the model, L*, where Mean-S / Mean-S(BA) come from, the
L2S predictor and L'. So a served method's vector is the vector the evaluation steers with. The
``[steering] alphas`` sweep and ``[generation]`` batching are evaluation's; serving reads its own
defaults from ``[serve]``::

    [serve]
    methods = []                    # served methods; [] = [steering] methods that can serve
    default_method = ""             # when a request names none; "" = the first served method
    alpha = 1.0                     # a steering method's alpha when a request gives none
    method_alphas = {}              # per-method defaults, e.g. { l2s = 2.2 }
    model_name = ""                 # model ids are "<model_name>:<method>"; "" = the model folder's name
    max_tokens = 256                # the most new tokens a request may ask for
    default_max_tokens = 0          # when a request gives none; 0 = [generation] max_new_tokens
    image_root = ""                 # local image paths must lie under this folder; "" = none allowed
    text_only = "blank"             # a request without an image: "blank" (a gray stand-in) | "refuse"
    max_batch_size = 8              # Ray Serve batching: rows per generate call ...
    batch_wait_timeout_s = 0.02     # ... and how long a batch waits to fill
    replicas = 1                    # one per GPU when [model] device is cuda, CPU replicas otherwise
    cpus_per_replica = 1            # CPU replicas: CPUs (torch threads) each
    max_ongoing_requests = 64       # queued at a replica before Ray Serve routes elsewhere
    health_check_period_s = 10.0    # how often Ray Serve checks each replica (a dead one is replaced)
    host = "127.0.0.1"              # loopback by default
    port = 8000
    name = "l2s"                    # the Ray Serve application name ...
    route_prefix = "/"              # ... and where it answers: <route_prefix>/v1/chat/completions

Methods P2S* and Norm-Rnd are not served: both need the request's own contrastive pair (its
P2S vector), which a chat request does not carry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from l2s_data.actors import absolute_path
from l2s_data.configfile import read_toml, validation_message
from l2s_data.errors import ConfigError
from l2s_data.evaluate.config import EvalConfig, parse_config as parse_eval_config
from l2s_data.evaluate.methods import get_method, parse_alpha

__all__ = ["SERVABLE", "ServeSection", "ServeConfig", "load_serve_config", "parse_serve_config"]

#: Methods whose vector does not need the input's contrastive pair.
SERVABLE: tuple[str, ...] = ("none", "prompt-only", "mean-s", "mean-s-ba", "l2s")

_EXAMPLE = "l2s_data/serve/configs/tiny-llava.toml"


class ServeSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    methods: list[str] = Field(default_factory=list)
    default_method: str = ""
    alpha: float = 1.0
    method_alphas: dict[str, float] = Field(default_factory=dict)
    model_name: str = ""
    max_tokens: int = Field(default=256, ge=1)
    default_max_tokens: int = Field(default=0, ge=0)
    image_root: str = ""
    text_only: Literal["blank", "refuse"] = "blank"
    max_batch_size: int = Field(default=8, ge=1)
    batch_wait_timeout_s: float = Field(default=0.02, ge=0.0)
    replicas: int = Field(default=1, ge=1)
    cpus_per_replica: int = Field(default=1, ge=1)
    max_ongoing_requests: int = Field(default=64, ge=1)
    health_check_period_s: float = Field(default=10.0, gt=0.0)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    name: str = Field(default="l2s", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    route_prefix: str = Field(default="/", pattern=r"^/([A-Za-z0-9._-]+/?)*$")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        return _unique(get_method(m).name for m in v)

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha(cls, v: Any) -> float:
        return parse_alpha(v, where="serve.alpha")

    @field_validator("method_alphas", mode="before")
    @classmethod
    def _method_alphas(cls, v: Any) -> dict[str, float]:
        if not isinstance(v, dict):
            raise ValueError(f"expected a table of method = alpha, got {v!r}")
        return {get_method(k).name: parse_alpha(a, where=f"serve.method_alphas.{k}") for k, a in v.items()}


def _unique(names) -> list[str]:
    out: list[str] = []
    for n in names:
        if n not in out:
            out.append(n)
    return out


class ServeConfig:
    """A validated serving config: ``evaluation`` (the vectors' sources) and ``serve``."""

    def __init__(self, evaluation: EvalConfig, serve: ServeSection):
        self.evaluation = evaluation
        self.serve = serve
        wanted = serve.methods or [m for m in evaluation.steering.methods if m in SERVABLE]
        bad = [m for m in wanted if m not in SERVABLE]
        if bad:
            raise ConfigError(f"serve.methods names {bad}, which need each input's own contrastive pair (its P2S "
                              f"vector) and cannot be served; serve some of {', '.join(SERVABLE)}.")
        if not wanted:
            raise ConfigError(f"nothing to serve: [steering] methods {evaluation.steering.methods} has none of "
                              f"{', '.join(SERVABLE)}; list them in serve.methods.")
        missing = [m for m in wanted if m not in evaluation.steering.methods]
        if missing:
            raise ConfigError(f"serve.methods names {missing}, which [steering] methods does not list; add them "
                              f"there too, so the vectors are prepared as the evaluation prepares them.")
        self.methods: tuple[str, ...] = tuple(wanted)
        default = get_method(serve.default_method).name if serve.default_method else self.methods[0]
        if default not in self.methods:
            raise ConfigError(f"serve.default_method = {serve.default_method!r} is not served; pick one of "
                              f"{', '.join(self.methods)}.")
        self.default_method = default
        unknown = sorted(set(serve.method_alphas) - set(self.methods))
        if unknown:
            raise ConfigError(f"serve.method_alphas names {unknown}, which are not served ({', '.join(self.methods)}).")
        self.model_name = serve.model_name or Path(evaluation.model.path).name or "model"

    def default_alpha(self, method: str) -> float | None:
        """A method's alpha when a request gives none (None for the unsteered methods)."""
        if not get_method(method).steers:
            return None
        return self.serve.method_alphas.get(method, self.serve.alpha)

    @property
    def default_max_tokens(self) -> int:
        return min(self.serve.default_max_tokens or self.evaluation.generation.max_new_tokens, self.serve.max_tokens)

    def model_id(self, method: str) -> str:
        return f"{self.model_name}:{method}"

    @property
    def model_ids(self) -> dict[str, str]:
        """Model id -> method, one per served method (what ``GET /v1/models`` lists)."""
        return {self.model_id(m): m for m in self.methods}

    def to_dict(self) -> dict[str, Any]:
        return {**self.evaluation.to_dict(), "serve": self.serve.model_dump(mode="json")}

    def check_files(self) -> None:
        """Refuse (before anything starts) a model or predictor path that names nothing here."""
        for what, p in (("[model] path", self.evaluation.model.path), ("[l2s] predictor", self.evaluation.l2s.predictor)):
            if p and "://" not in p and not Path(p).exists():
                raise ConfigError(f"{what} = {p!r} does not exist (relative paths are read from the folder you run "
                                  f"in: {os.getcwd()})")

    def absolute(self) -> ServeConfig:
        """The config with every local path made absolute (replicas do not share this cwd)."""
        d = self.to_dict()
        d["model"]["path"] = absolute_path(d["model"]["path"])
        d["data"]["path"] = absolute_path(d["data"]["path"])
        d["run"]["store"] = absolute_path(d["run"]["store"])
        d["l2s"]["predictor"] = absolute_path(d["l2s"]["predictor"])
        for k in ("mean_s", "mean_s_ba"):
            if d["vectors"][k] != "cache":
                d["vectors"][k] = absolute_path(d["vectors"][k])
        d["serve"]["image_root"] = absolute_path(d["serve"]["image_root"])
        return parse_serve_config(d, source="(resolved)")

    @property
    def identity(self) -> str:
        """A short hash of the resolved config (logged with the deployment)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def parse_serve_config(data: dict[str, Any], *, source: str = "<dict>") -> ServeConfig:
    """Validate a serving config dict; :class:`ConfigError` names every bad or unknown key."""
    if not isinstance(data, dict):
        raise ConfigError(f"serving config {source}: expected a table, got {type(data).__name__}")
    data = dict(data)
    raw = data.pop("serve", {})
    evaluation = parse_eval_config(data, source=source)
    try:
        serve = ServeSection.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(validation_message(err, f"serving config {source} [serve]")) from None
    except ConfigError as err:
        raise ConfigError(f"invalid serving config {source} [serve]: {err}") from None
    return ServeConfig(evaluation, serve)


def load_serve_config(path: str | Path) -> ServeConfig:
    """Read and validate a TOML serving config."""
    data = read_toml(path, "serving config", example=_EXAMPLE)
    return parse_serve_config(data, source=repr(str(path)))
