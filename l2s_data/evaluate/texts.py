"""Evaluation texts as data: prompt-only instructions, phrase lists, the guard's few-shot prompt.

The strings live in ``l2s_data/evaluate/data/*.toml`` (``prompt_only.toml``,
``phrases.toml``, ``guard.toml``); :func:`load_texts` reads them into one frozen object.
A folder holding files of the same names (all three, or only some) overrides the shipped ones.

    >>> from l2s_data.evaluate.texts import load_texts
    >>> texts = load_texts()
    >>> texts.prompt_only["pope"].apply("Is there a dog in the image?")
    'Examine the image carefully and answer: Is there a dog in the image?'
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from l2s_data.errors import ConfigError

__all__ = ["PromptOnly", "GuardPrompt", "EvalTexts", "load_texts", "TEXT_FILES"]

TEXT_FILES = ("prompt_only.toml", "phrases.toml", "guard.toml")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptOnly(_Strict):
    """An instruction added to the query (the prompt-only baseline)."""

    position: Literal["prefix", "suffix"]
    text: str = Field(min_length=1)

    def apply(self, query: str) -> str:
        return self.text + query if self.position == "prefix" else query + self.text


class _Example(_Strict):
    user: str
    assistant: str


class GuardPrompt(_Strict):
    """The guard model's few-shot chat (see guard.toml for how it is assembled)."""

    model: str
    unsafe_token: str
    generation_prefix: str
    instruction: str
    examples: tuple[_Example, ...] = Field(min_length=1)

    def messages(self, response: str) -> list[dict[str, str]]:
        """The chat to template for one response: [{"role", "content"}, ...], user last."""
        out = []
        for i, ex in enumerate(self.examples):
            out.append({"role": "user", "content": (self.instruction if i == 0 else "") + ex.user})
            out.append({"role": "assistant", "content": ex.assistant})
        out.append({"role": "user", "content": response})
        return out


class _Phrases(_Strict):
    refusal: tuple[str, ...] = Field(min_length=1)
    expert_deferral: tuple[str, ...] = Field(min_length=1)


class _PromptOnlyFile(_Strict):
    safety: PromptOnly
    pope: PromptOnly


@dataclass(frozen=True)
class EvalTexts:
    """Every evaluation string, loaded from data files."""

    prompt_only: Mapping[str, PromptOnly]  # read-only; task ("safety", "pope") -> instruction
    refusal_phrases: tuple[str, ...]
    deferral_phrases: tuple[str, ...]
    guard: GuardPrompt
    sources: tuple[str, ...] = ()

    @staticmethod
    def _norm(text: str) -> str:
        return text.translate(_APOSTROPHES).lower()

    def is_refusal(self, response: str) -> bool:
        """True when the response contains a refusal phrase (case-insensitive)."""
        r = self._norm(response)
        return any(self._norm(p) in r for p in self.refusal_phrases)

    def defers_to_expert(self, response: str) -> bool:
        """True when the response contains an expert-deferral phrase (case-insensitive)."""
        r = self._norm(response)
        return any(self._norm(p) in r for p in self.deferral_phrases)


def _read(name: str, override: Path | None) -> tuple[dict[str, Any], str]:
    if override is not None and (override / name).is_file():
        src = str(override / name)
        text = (override / name).read_text("utf-8")
    else:
        src = f"l2s_data/evaluate/data/{name}"
        text = resources.files("l2s_data.evaluate").joinpath("data", name).read_text("utf-8")
    try:
        return tomllib.loads(text), src
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{src}: not valid TOML: {e}") from None


def _validate(model: type[BaseModel], data: dict[str, Any], src: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        keys = "; ".join(f"key {'.'.join(map(str, err['loc']))!r}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{src}: {keys}") from None


@lru_cache(maxsize=8)
def _load(override: str | None) -> EvalTexts:
    o = Path(override) if override else None
    if o is not None and not o.is_dir():
        raise ConfigError(f"evaluation text folder {override!r} does not exist (expected files {list(TEXT_FILES)}).")
    po_raw, po_src = _read("prompt_only.toml", o)
    ph_raw, ph_src = _read("phrases.toml", o)
    gd_raw, gd_src = _read("guard.toml", o)
    po = _validate(_PromptOnlyFile, po_raw, po_src)
    ph = _validate(_Phrases, ph_raw, ph_src)
    gd = _validate(GuardPrompt, gd_raw, gd_src)
    return EvalTexts(
        prompt_only=MappingProxyType({"safety": po.safety, "pope": po.pope}),
        refusal_phrases=ph.refusal,
        deferral_phrases=ph.expert_deferral,
        guard=gd,
        sources=(po_src, ph_src, gd_src),
    )


def load_texts(override_dir: str | os.PathLike | None = None) -> EvalTexts:
    """The shipped evaluation texts, or those of ``override_dir`` where it has a file."""
    return _load(str(Path(override_dir).resolve()) if override_dir is not None else None)
