"""The evaluation config: one TOML file names the model, the samples, the methods and alphas,
where the vectors come from, the judges and the store. Every section rejects unknown keys and
names the bad key. Defaults live here::

    preset = ""                     # e.g. "reference-llava": its [data] task's generation settings,
                                    # alpha and L* fill what this file leaves out (the file wins)

    [model]
    path = "demo-out/tiny-llava"
    dtype = "float32"
    device = "cpu"
    attn_implementation = "eager"

    [data]                          # a directory written by write_dataset
    path = "demo-out/data"
    task = "safety"                 # safety | pope: which metrics and prompt-only instruction
    split = "test"                  # the split evaluated
    datasets = []                   # filters on memberships; [] = all
    subsets = []
    categories = []
    limit = 0                       # 0 = every selected sample (else the first N by sample id)
    validation_fraction = 0.5       # share of evaluated samples (by sample-id hash) that choose alpha
    behavior = ""                   # pairs for P2S* / Norm-Rnd of samples not in the cache

    [steering]
    layer = 14                      # L*: the decoder layer whose output is steered (0-based)
    methods = ["none", "prompt-only", "mean-s", "mean-s-ba", "norm-rnd", "l2s", "p2s"]
    alphas = [1.0]                  # one alpha or a list (a sweep), for every steering method
    method_alphas = {}              # per-method lists, e.g. { l2s = [1.0, 2.2] }
    seed = 0                        # Norm-Rnd's directions

    [cache]                         # cached activations in the store of [run]
    input_recipe = ""               # recipe (id or name) of the input view: L2S's h_X
    pair_recipe = ""                # recipe of the p2s view: P2S*, Norm-Rnd, Mean-S
    ba_recipe = ""                  # recipe of the behaviour-agnostic pair: Mean-S(BA)
    input_position = ""             # L2S's h_X position: "" = the predictor's, else prompt_last
    pair_position = ""              # P2S position: "" = the predictor's target position, else completion_last
    pair_position_overrides = {}    # category -> position; {} = the predictor's (reference-qwen: 10-13)
    strict = false                  # true: refuse to compute a P2S live (a sample missing from the cache)

    [vectors]                       # "cache": the mean of the training split's cached P2S
    mean_s = "cache"                # ... or a .safetensors file holding one [D] tensor
    mean_s_ba = "cache"

    [l2s]
    predictor = ""                  # a trained predictor's file
    input_layer = 14                # L' (may be deeper than L*); default: what the file records

    [generation]
    max_new_tokens = 64             # for the steered methods
    max_new_tokens_unsteered = 0    # for none and prompt-only; 0 = max_new_tokens
    do_sample = false               # greedy by default
    seed = 0
    batch_size = 8

    [judges]
    guard = ""                      # a local causal-LM checkpoint (Llama-Guard-3-8B): Unsafe-score
    guard_device = "cpu"
    guard_dtype = "float32"
    quality_url = ""                # an OpenAI-compatible endpoint ... or
    quality_path = ""               # a local causal LM: response quality
    quality_model = "judge"
    quality_api_key_env = ""

    [run]
    store = "demo-out/store"        # results go to its evaluations table; the cache is read there
    name = ""                       # the run id; "" = derived from the config (reruns resume)
    unit_size = 64                  # samples per unit of work (a shard for a Ray actor)
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from l2s_data.behaviors import load_preset
from l2s_data.configfile import read_toml, validation_message
from l2s_data.errors import BehaviorError, ConfigError
from l2s_data.evaluate.methods import get_method, parse_alphas

__all__ = ["EvalConfig", "config_identity", "load_config", "parse_config", "RUN_ID_PATTERN"]

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Section):
    path: str
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"
    attn_implementation: str = "eager"


class DataSection(_Section):
    path: str
    task: Literal["safety", "pope"] = "safety"
    split: str = "test"
    datasets: list[str] = Field(default_factory=list)
    subsets: list[str] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    limit: int = Field(default=0, ge=0)
    validation_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    behavior: str = ""


class SteeringSection(_Section):
    layer: int = Field(ge=0)
    methods: list[str] = Field(default_factory=lambda: ["none", "prompt-only", "mean-s", "mean-s-ba", "norm-rnd",
                                                        "l2s", "p2s"])
    alphas: Any = Field(default_factory=lambda: [1.0])
    method_alphas: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("names no method; pick from none, prompt-only, mean-s, mean-s-ba, norm-rnd, l2s, p2s")
        out = []
        for name in v:
            m = get_method(name).name
            if m not in out:
                out.append(m)
        return out

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, v: Any) -> list[float]:
        return list(parse_alphas(v, where="steering.alphas"))

    @field_validator("method_alphas")
    @classmethod
    def _method_alphas(cls, v: dict[str, Any]) -> dict[str, list[float]]:
        return {get_method(k).name: list(parse_alphas(a, where=f"steering.method_alphas.{k}")) for k, a in v.items()}

    def alphas_for(self, method: str) -> list[float | None]:
        """The alphas ``method`` runs at: [None] for the unsteered methods."""
        if not get_method(method).steers:
            return [None]
        return list(self.method_alphas.get(method, self.alphas))


class CacheSection(_Section):
    input_recipe: str = ""
    pair_recipe: str = ""
    ba_recipe: str = ""
    input_position: str = ""
    pair_position: str = ""
    pair_position_overrides: dict[str, str] = Field(default_factory=dict)
    strict: bool = False


class VectorsSection(_Section):
    mean_s: str = "cache"
    mean_s_ba: str = "cache"


class L2SSection(_Section):
    predictor: str = ""
    input_layer: int | None = Field(default=None, ge=0)


class GenerationSection(_Section):
    max_new_tokens: int = Field(default=64, ge=1)
    max_new_tokens_unsteered: int = Field(default=0, ge=0)
    do_sample: bool = False
    seed: int = 0
    batch_size: int = Field(default=8, ge=1)


class JudgesSection(_Section):
    guard: str = ""
    guard_device: str = "cpu"
    guard_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    quality_url: str = ""
    quality_path: str = ""
    quality_model: str = "judge"
    quality_api_key_env: str = ""


class RunSection(_Section):
    store: str
    name: str = ""
    unit_size: int = Field(default=64, ge=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v and not RUN_ID_PATTERN.match(v):
            raise ValueError(f"{v!r} is not a usable run id: use letters, digits, '.', '_' and '-' (at most 100)")
        return v


class EvalConfig(_Section):
    """The whole evaluation config (see the module docstring for every key and default)."""

    preset: str = ""
    model: ModelSection
    data: DataSection
    steering: SteeringSection
    cache: CacheSection = Field(default_factory=CacheSection)
    vectors: VectorsSection = Field(default_factory=VectorsSection)
    l2s: L2SSection = Field(default_factory=L2SSection)
    generation: GenerationSection = Field(default_factory=GenerationSection)
    judges: JudgesSection = Field(default_factory=JudgesSection)
    run: RunSection

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, JSON-able (stored with the run, printed by the CLI)."""
        return self.model_dump(mode="json")

    @property
    def run_id(self) -> str:
        """``run.name``, or a hash of :func:`config_identity`: a config that only adds methods
        or alphas keeps its run id, so a grown sweep computes only the new rows."""
        if self.run.name:
            return self.run.name
        text = json.dumps(config_identity(self.to_dict()), sort_keys=True, separators=(",", ":"))
        return "eval-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def config_identity(config: dict[str, Any]) -> dict[str, Any]:
    """What every row of a run shares: the config without ``[run]`` (where rows go, how work
    is cut) and without the methods and alphas (which rows there are)."""
    d = json.loads(json.dumps(config))
    d.pop("run", None)
    for key in ("methods", "alphas", "method_alphas"):
        d.get("steering", {}).pop(key, None)
    return d


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_defaults(name: str, task: str) -> dict[str, Any]:
    """What preset ``name`` decides of an evaluation of ``task``: the generation settings
    (sampling, new tokens steered and unsteered, dtype), alpha and L*."""
    try:
        t = load_preset(name).task(task)
    except BehaviorError as exc:
        raise ConfigError(f"preset = {name!r}, task = {task!r}: {exc}") from None
    g = t.generation
    return {"model": {"dtype": g.dtype}, "steering": {"layer": t.steer_layer, "alphas": [t.alpha]},
            "generation": {"do_sample": g.do_sample, "max_new_tokens": g.max_new_tokens,
                           "max_new_tokens_unsteered": g.max_new_tokens_unsteered}}


def parse_config(data: dict[str, Any], *, source: str = "<dict>") -> EvalConfig:
    """Validate a config dict (a preset fills what it leaves out); :class:`ConfigError` names
    every bad or unknown key."""
    if isinstance(data, dict) and data.get("preset"):
        task = (data.get("data") or {}).get("task", "safety") if isinstance(data.get("data"), dict) else "safety"
        data = _merge(preset_defaults(str(data["preset"]), str(task)), data)
    try:
        return EvalConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_message(err, f"evaluation config {source}")) from None
    except ConfigError as err:  # a method or alpha refused inside a validator
        raise ConfigError(f"invalid evaluation config {source}: {err}") from None


def load_config(path: str | Path) -> EvalConfig:
    """Read and validate a TOML evaluation config."""
    data = read_toml(path, "evaluation config", example="l2s_data/evaluate/configs/tiny-llava.toml")
    return parse_config(data, source=repr(str(path)))
