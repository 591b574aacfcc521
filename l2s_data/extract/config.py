"""The extraction config: one TOML file names the model, the data, the behavior and the recipe.

Every section rejects unknown keys and names the bad key, so a typo never silently falls back
to a default. Defaults live here, in one place::

    [model]                      # a local checkpoint directory (make-tiny output, LLaVA, Qwen)
    path = "demo-out/tiny-llava"
    dtype = "float32"            # compute dtype: float32 | float16 | bfloat16
    device = "cpu"
    attn_implementation = "eager"

    [data]                       # a directory written by write_dataset
    path = "demo-out/data"
    splits = ["train", "test"]   # optional filters on the memberships table
    categories = []              # [] = all
    limit = 0                    # 0 = no limit (else the first N samples by sample_id)

    [behavior]
    preset = "reference-llava"   # a preset name, and its task ...
    task = "safety"
    behavior = "safety"          # ... or a behavior name / TOML path (overrides the preset's)

    [recipe]
    views = ["input", "pos", "neg", "p2s"]
    input_positions = ["prompt_last"]        # default: the preset's, else prompt_last
    pair_positions = ["completion_last"]     # default: the preset's, else completion_last
    layers = "all"                           # "all", "a:b[:step]" or [i, j, ...]
    store_dtype = "float16"
    [recipe.completion]                      # default: the preset's, else none
    max_new_tokens = 0                       # > 0: extend P_c / N_c by generated tokens
    do_sample = false
    seed = 0
    include_last_generated = false           # the reference leaves the last generated token out

    [run]
    store = "demo-out/store"     # local path or fsspec URL
    batch_size = 8
    shard_size = 64

Relative paths are relative to the working directory (as for every ``l2s`` command).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from l2s_data.configfile import read_toml, validation_message
from l2s_data.errors import ConfigError

__all__ = [
    "DTYPES",
    "VIEWS",
    "INPUT_VIEWS",
    "PAIR_VIEWS",
    "ModelSection",
    "DataSection",
    "BehaviorSection",
    "CompletionSection",
    "RecipeSection",
    "RunSection",
    "ExtractConfig",
    "load_config",
    "parse_config",
    "parse_layers",
]

DTYPES = ("float32", "float16", "bfloat16")
INPUT_VIEWS = ("input",)
PAIR_VIEWS = ("pos", "neg", "p2s")
VIEWS = INPUT_VIEWS + PAIR_VIEWS

Dtype = Literal["float32", "float16", "bfloat16"]
View = Literal["input", "pos", "neg", "p2s"]


class _Section(BaseModel):
    # extra="forbid": an unknown key is an error that names the key (see parse_config).
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Section):
    """Which checkpoint, and how to run it (both change the numbers, so both are hashed)."""

    path: str
    dtype: Dtype = "float32"
    device: str = "cpu"
    attn_implementation: str = "eager"
    trust_remote_code: bool = False

    def load_adapter(self) -> Any:
        """Load the model this section names (a ``ModelAdapter``)."""
        from l2s_data.models import load_adapter  # transformers: ~1.4 s of import, only when a model loads

        return load_adapter(self.path, dtype=self.dtype, device=self.device,
                            attn_implementation=self.attn_implementation,
                            trust_remote_code=self.trust_remote_code)


class DataSection(_Section):
    """Which samples: a write_dataset directory and filters on its memberships."""

    path: str
    splits: list[str] = Field(default_factory=list)
    datasets: list[str] = Field(default_factory=list)
    subsets: list[str] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    limit: int = Field(default=0, ge=0)


class BehaviorSection(_Section):
    """Where the contrastive pairs (and the preset's positions / layers) come from."""

    preset: str | None = None
    task: Literal["safety", "pope"] | None = None
    behavior: str | None = None
    system: str | None = None


class CompletionSection(_Section):
    """Sampled continuation of the pos / neg completions before they are read (POPE reference).

    ``include_last_generated``: feed back the last generated token when generation stops at
    ``max_new_tokens`` (the reference does not: false).
    """

    max_new_tokens: int = Field(default=0, ge=0)
    do_sample: bool = False
    seed: int = 0
    include_last_generated: bool = False


class RecipeSection(_Section):
    """What is stored: views, positions, layers, dtype. All of it is hashed into recipe ids."""

    views: list[View] = Field(default_factory=lambda: list(VIEWS))
    input_positions: list[str] | None = None
    pair_positions: list[str] | None = None
    layers: str | list[int] = "all"
    input_layers: str | list[int] | None = None
    pair_layers: str | list[int] | None = None
    store_dtype: Dtype = "float16"
    completion: CompletionSection | None = None

    @field_validator("views")
    @classmethod
    def _views_unique_and_nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"views must name at least one of {list(VIEWS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"views repeat a name: {v}")
        return v

    @field_validator("layers", "input_layers", "pair_layers")
    @classmethod
    def _layers_parse(cls, v: str | list[int] | None) -> str | list[int] | None:
        if v is not None:
            parse_layers(v, num_layers=None)  # syntax check only; range checked on the model
        return v


class RunSection(_Section):
    """How the run is cut and where it goes (not hashed: changing these keeps the keys)."""

    store: str
    batch_size: int = Field(default=8, ge=1)
    shard_size: int = Field(default=64, ge=1)
    prefix_sharing: bool = True
    write_queue: int = Field(default=2, ge=1)
    retry_errors: bool = False
    name: str | None = None


class ExtractConfig(_Section):
    """The whole extraction config (see the module docstring for a full example)."""

    model: ModelSection
    data: DataSection
    behavior: BehaviorSection = Field(default_factory=BehaviorSection)
    recipe: RecipeSection = Field(default_factory=RecipeSection)
    run: RunSection

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, JSON-able (saved next to outputs, printed by the CLI)."""
        return self.model_dump(mode="json")


def parse_layers(spec: str | list[int], *, num_layers: int | None) -> tuple[int, ...]:
    """Turn ``"all"``, ``"a:b[:step]"`` or ``[i, j]`` into sorted 0-based layer indices.

    With ``num_layers=None`` only the syntax is checked and ``"all"`` returns ``()``.
    """
    if isinstance(spec, str):
        text = spec.strip()
        if text == "all":
            return tuple(range(num_layers)) if num_layers is not None else ()
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(p.strip().lstrip("-").isdigit() for p in parts if p.strip()):
            raise ConfigError(
                f"layers = {spec!r} is not understood: expected \"all\", \"start:stop[:step]\" "
                f"(0-based, stop excluded, e.g. \"10:20\") or a list of ints such as [14, 15]"
            )
        start = int(parts[0]) if parts[0].strip() else 0
        if parts[1].strip():
            stop = int(parts[1])
        elif num_layers is not None:
            stop = num_layers
        else:
            stop = start + 1
        step = int(parts[2]) if len(parts) == 3 and parts[2].strip() else 1
        if step <= 0 or start < 0 or stop <= start:
            raise ConfigError(f"layers = {spec!r} is an empty or negative range; write e.g. \"0:8\"")
        layers = tuple(range(start, stop, step))
    else:
        if not spec:
            raise ConfigError("layers = [] names no layer; write \"all\" or e.g. [14, 15]")
        if any(not isinstance(x, int) or isinstance(x, bool) or x < 0 for x in spec):
            raise ConfigError(f"layers = {spec!r}: expected non-negative ints (0-based layer indices)")
        layers = tuple(sorted(set(spec)))
    if num_layers is not None and layers and layers[-1] >= num_layers:
        bad = [x for x in layers if x >= num_layers]
        raise ConfigError(
            f"layers = {spec!r} names layer(s) {bad}, but the model has {num_layers} decoder "
            f"layers (0..{num_layers - 1}); lower them or use \"all\""
        )
    return layers


def parse_config(data: dict[str, Any], *, source: str = "<dict>") -> ExtractConfig:
    """Validate a config dict; :class:`ConfigError` names every bad or unknown key."""
    try:
        return ExtractConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_message(err, f"extraction config {source}")) from None
    except ConfigError as err:  # raised by parse_layers inside a validator
        raise ConfigError(f"invalid extraction config {source}: {err}") from None


def load_config(path: str | Path) -> ExtractConfig:
    """Read and validate a TOML extraction config."""
    data = read_toml(path, "extraction config", example="l2s_data/extract/configs/*.toml")
    return parse_config(data, source=repr(str(path)))
