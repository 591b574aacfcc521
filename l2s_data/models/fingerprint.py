"""Model fingerprint: a stable hash of what changes the numbers.

Components (:func:`fingerprint_spec`): the family and model class, the model config, the
weights, the processor (chat template, tokenizer files, image processor config), the compute
dtype and the attention implementation. The digest is sha256 over the canonical JSON of the
spec. Config, tokenizer and image-processor digests come from the checkpoint's files with
volatile keys (``transformers_version``, ``_name_or_path``, ``dtype``, ``processor_class``...)
dropped, so loading the same directory with another library version or processor class (the
image-only Qwen processor or the stock one) gives the same fingerprint.

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


# Keys that describe how a file was written or loaded, not what it computes.
_VOLATILE = {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "_attn_implementation_autoset",
             "attn_implementation", "processor_class", "auto_map", "_commit_hash"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "vocab.json", "merges.txt")
_IMAGE_FILES = ("preprocessor_config.json", "processor_config.json")


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in _VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _file_digest(path: Path) -> str:
    """JSON files canonically (volatile keys dropped), anything else by its bytes."""
    data = path.read_bytes()
    if path.suffix == ".json":
        try:
            return _sha(json.dumps(_strip(json.loads(data)), sort_keys=True))
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    return hashlib.sha256(data).hexdigest()


def _files_digest(path: Path, names: tuple[str, ...]) -> str | None:
    found = [path / n for n in names if (path / n).is_file()]
    if not found:
        return None
    return _sha(json.dumps({f.name: _file_digest(f) for f in found}, sort_keys=True))


def processor_spec(processor, path: Path | None = None) -> dict:
    """Digests of what the processor contributes: template, tokenizer, image processor.

    From the checkpoint's files when there are any (stable across library versions, which may
    serialise a loaded object differently), else from the loaded objects.
    """
    tok = processor.tokenizer
    tokenizer = image = None
    if path is not None:
        tokenizer = _files_digest(path, _TOKENIZER_FILES)
        image = _files_digest(path, _IMAGE_FILES)
    if tokenizer is None:
        backend = getattr(tok, "backend_tokenizer", None)
        tokenizer = _sha(backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True))
    if image is None:
        image = _sha(json.dumps(_strip(processor.image_processor.to_dict()), sort_keys=True, default=str))
    return {
        "chat_template": _sha(processor.chat_template or ""),
        "tokenizer": tokenizer,
        "image_processor": image,
    }


def config_digest(path: Path | None, model: torch.nn.Module) -> str:
    """The model config (architecture, rope, norms...), volatile keys dropped."""
    if path is not None and (path / "config.json").is_file():
        return _file_digest(path / "config.json")
    return _sha(json.dumps(_strip(model.config.to_dict()), sort_keys=True, default=str))


def fingerprint_spec(adapter) -> dict:
    path = None if adapter.path is None else Path(adapter.path)
    method, weights = weights_digest(path, adapter.model)
    return {
        "format": FORMAT,
        "family": adapter.family,
        "model_class": type(adapter.model).__name__,
        "config": config_digest(path, adapter.model),
        "weights": {"method": method, "digest": weights},
        "processor": processor_spec(adapter.processor, path),
        "dtype": str(adapter.dtype).removeprefix("torch."),
        "attn_implementation": adapter.attn_implementation,
    }
