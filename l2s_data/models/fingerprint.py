"""Model fingerprint: a stable hash of what changes the numbers.

Components (:func:`fingerprint_spec`): the family and model class, the weights, the processor
(chat template, tokenizer, image processor and processor settings), the compute dtype and the
attention implementation. The digest is sha256 over the canonical JSON of the spec.

Weights. Hashing all bytes of a 7B checkpoint (14 GB) takes tens of seconds, so the weights
digest reads each safetensors file's header (every tensor's name, dtype, shape and byte
offsets, so any change of layout shows) plus a strided sample of every tensor's bytes: tensors
up to 4 KiB entirely, larger ones as 16 windows of 256 bytes spread evenly over the tensor.
That reads about 3 MB for a 7B model, is independent of the compute dtype and the device, and
catches any training or fine-tuning (which changes nearly all bytes). A deliberate edit
confined to unsampled bytes is not detected; the sampling is a documented trade-off. When a
checkpoint has no safetensors files (an in-memory model or a ``.bin`` checkpoint), the same
sampling runs over the loaded state dict instead.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch

__all__ = ["fingerprint_spec", "digest", "weights_digest", "FORMAT"]

FORMAT = 1  # bump when the spec's meaning changes
_WINDOWS, _WINDOW = 16, 256


def digest(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _sample_ranges(nbytes: int) -> list[tuple[int, int]]:
    if nbytes <= _WINDOWS * _WINDOW:
        return [(0, nbytes)]
    step = (nbytes - _WINDOW) / (_WINDOWS - 1)
    return [(int(k * step), int(k * step) + _WINDOW) for k in range(_WINDOWS)]


def _safetensors_digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
            header.pop("__metadata__", None)
            h.update(json.dumps(header, sort_keys=True).encode())
            base = 8 + n
            for name in sorted(header):
                start, end = header[name]["data_offsets"]
                for a, b in _sample_ranges(end - start):
                    fh.seek(base + start + a)
                    h.update(fh.read(b - a))
    return h.hexdigest()


def _state_dict_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        flat = t.detach().reshape(-1)
        if flat.numel() > _WINDOWS * _WINDOW // max(t.element_size(), 1):
            idx = torch.linspace(0, flat.numel() - 1, _WINDOWS * 64, device=flat.device).long()
            flat = flat[idx]
        h.update(flat.float().cpu().numpy().tobytes())
    return h.hexdigest()


def weights_digest(path: Path | None, model: torch.nn.Module) -> tuple[str, str]:
    """(method, hex digest) of the weights: sampled safetensors files, else the state dict."""
    files = sorted(Path(path).glob("*.safetensors")) if path is not None else []
    if files:
        return "safetensors-sampled", _safetensors_digest(files)
    return "state-dict-sampled", _state_dict_digest(model)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def processor_spec(processor) -> dict:
    tok = processor.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    tok_text = backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True)
    image = processor.image_processor.to_dict()
    image.pop("processor_class", None)
    settings = {k: getattr(processor, k, None) for k in
                ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens", "image_token")}
    return {
        "class": type(processor).__name__.replace("ImageProcessorOnly", "Processor"),
        "chat_template": _sha(processor.chat_template or ""),
        "tokenizer": _sha(tok_text),
        "special_tokens": _sha(json.dumps(sorted(map(str, tok.all_special_tokens)))),
        "image_processor": _sha(json.dumps(image, sort_keys=True, default=str)),
        "settings": settings,
    }


def fingerprint_spec(adapter) -> dict:
    method, weights = weights_digest(adapter.path, adapter.model)
    return {
        "format": FORMAT,
        "family": adapter.family,
        "model_class": type(adapter.model).__name__,
        "weights": {"method": method, "digest": weights},
        "processor": processor_spec(adapter.processor),
        "dtype": str(adapter.dtype).removeprefix("torch."),
        "attn_implementation": adapter.attn_implementation,
    }
