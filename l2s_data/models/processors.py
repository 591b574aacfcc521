"""Processors that work without torchvision, and a loader that checks what it got.

transformers builds the Qwen2-VL / Qwen2.5-VL processors with a video processor, and the video
processor needs torchvision, which does not import beside the pinned CPU torch (DESIGN.md 6).
The subclasses below leave the video processor out; everything else (image token expansion,
``mm_token_type_ids``, the chat template) is the parent's code. They are registered with
``AutoProcessor`` on import, so ``AutoProcessor.from_pretrained(dir)`` returns the full
processor for a directory written by :func:`l2s_data.models.make_tiny`.

``AutoProcessor`` silently returns a bare tokenizer when it cannot build a processor class;
:func:`load_processor` checks for an image processor and falls back to the image-only class.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoProcessor, ProcessorMixin, Qwen2_5_VLConfig, Qwen2VLConfig
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

from l2s_data.errors import ModelLoadError

__all__ = ["Qwen2VLImageProcessorOnly", "Qwen2_5_VLImageProcessorOnly", "load_processor"]


def _init_image_only(self, image_processor, tokenizer, chat_template) -> None:
    # The same attributes the parent __init__ sets, minus the video processor argument.
    self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
    self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
    self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
        self.image_token
    )
    self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
        self.video_token
    )
    ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class Qwen2VLImageProcessorOnly(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without the video processor (images and text only)."""

    attributes = ["image_processor", "tokenizer"]  # versions that read this instead of __init__

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        _init_image_only(self, image_processor, tokenizer, chat_template)


class Qwen2_5_VLImageProcessorOnly(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor (images and text only)."""

    attributes = ["image_processor", "tokenizer"]  # versions that read this instead of __init__

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        _init_image_only(self, image_processor, tokenizer, chat_template)


# Registering by config class puts the classes where AutoProcessor looks names up, so a saved
# processor_config.json naming them resolves. exist_ok: transformers maps these configs already.
AutoProcessor.register(Qwen2VLConfig, Qwen2VLImageProcessorOnly, exist_ok=True)
AutoProcessor.register(Qwen2_5_VLConfig, Qwen2_5_VLImageProcessorOnly, exist_ok=True)

_IMAGE_ONLY = {"qwen2-vl": Qwen2VLImageProcessorOnly, "qwen2.5-vl": Qwen2_5_VLImageProcessorOnly}


def _is_full(processor) -> bool:
    return isinstance(processor, ProcessorMixin) and getattr(processor, "image_processor", None) is not None


def load_processor(path: str | Path, family: str, *, trust_remote_code: bool = False) -> ProcessorMixin:
    """Load the full processor (tokenizer + image processor + chat template) of ``path``.

    Tries ``AutoProcessor`` first (the real class when its dependencies import), then the
    image-only class of the family. Raises :class:`ModelLoadError` when neither gives a
    processor with an image processor and a chat template.
    """
    errors: list[str] = []
    processor = None
    try:
        processor = AutoProcessor.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # noqa: BLE001 - any failure here falls back to the image-only class
        errors.append(f"AutoProcessor: {type(exc).__name__}: {exc}")
    if not _is_full(processor) and family in _IMAGE_ONLY:
        try:
            processor = _IMAGE_ONLY[family].from_pretrained(str(path), local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{_IMAGE_ONLY[family].__name__}: {type(exc).__name__}: {exc}")
    if not _is_full(processor):
        got = type(processor).__name__ if processor is not None else "nothing"
        raise ModelLoadError(
            f"{path}: expected a full {family} processor (tokenizer + image processor), got {got}. "
            f"Save one with processor.save_pretrained({str(path)!r}). Details: {'; '.join(errors) or '-'}"
        )
    if not getattr(processor, "chat_template", None):
        raise ModelLoadError(
            f"{path}: the processor has no chat template; expected chat_template.jinja (or "
            "chat_template.json) next to the processor files. Set processor.chat_template and save it."
        )
    return processor
