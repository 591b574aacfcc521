"""``load_adapter``: a local checkpoint directory -> :class:`ModelAdapter`, offline.

The family comes from ``config.json`` (``model_type``), so a tiny checkpoint from
:func:`make_tiny` and a real llava-hf LLaVA-1.5-7B or Qwen2-VL-7B-Instruct directory take the
same path. Nothing is fetched from a hub (``local_files_only=True``), and remote code runs only
when ``trust_remote_code=True`` is asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from l2s_data.errors import ConfigError, ModelLoadError
from l2s_data.models.adapter import ModelAdapter
from l2s_data.models.families import MODEL_CLASSES, family_of
from l2s_data.models.processors import load_processor

__all__ = ["load_adapter", "detect_family", "DTYPES", "ATTN_IMPLEMENTATIONS"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")


def detect_family(path: str | Path) -> str:
    """The family of the checkpoint in ``path``; :class:`ModelLoadError` if none is supported."""
    path = Path(path)
    config = path / "config.json"
    if not path.is_dir():
        raise ModelLoadError(f"{path}: not a directory; expected a checkpoint directory with config.json "
                             "(write a tiny one with `l2s models make-tiny llava DIR`).")
    if not config.is_file():
        raise ModelLoadError(f"{path}: no config.json, so this directory holds no model; expected a "
                             "save_pretrained() checkpoint of llava, qwen2_vl or qwen2_5_vl.")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ModelLoadError(f"{config}: not a JSON object ({exc}); re-save the checkpoint.") from None
    return family_of(model_type, str(path))


def load_adapter(path: str | Path, *, dtype: str = "float32", device: str = "cpu",
                 attn_implementation: str = "eager", trust_remote_code: bool = False) -> ModelAdapter:
    """Load the model and its full processor from a local directory.

    ``dtype``: compute dtype (float32, float16, bfloat16). ``attn_implementation``: eager, sdpa,
    flash_attention_2/3 (both are part of the fingerprint: they change the numbers).
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}.")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"attn_implementation={attn_implementation!r}: expected one of "
                          f"{', '.join(ATTN_IMPLEMENTATIONS)}.")
    family = detect_family(path)
    cls = MODEL_CLASSES[family]
    try:
        model = cls.from_pretrained(
            str(path), dtype=DTYPES[dtype], attn_implementation=attn_implementation,
            local_files_only=True, trust_remote_code=trust_remote_code,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - safetensors, torch and transformers raise many kinds
        raise ModelLoadError(f"{path}: cannot load a {cls.__name__} ({type(exc).__name__}: {exc}).") from exc
    try:
        model.to(torch.device(device))
    except (RuntimeError, AssertionError) as exc:
        raise ModelLoadError(f"device={device!r}: cannot move the model there ({exc}).") from exc
    processor = load_processor(path, family, trust_remote_code=trust_remote_code)
    return ModelAdapter(model, processor, family, path=path, attn_implementation=attn_implementation)
