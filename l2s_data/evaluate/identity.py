"""Which model an evaluation ran, in words a report can open with.

An evaluation records the identity when it starts (``runs.metrics_json["model"]``): the path,
the family (``model_type``), the language model's hidden size and layer count, the weights'
fingerprint, and whether the checkpoint is tiny. A checkpoint written by
:func:`l2s_data.models.make_tiny` says so in its ``l2s_model.json`` (``{"tiny": true,
"weights": "random", ...}``); a checkpoint without that file whose language model is at most
:data:`TINY_HIDDEN` wide is called tiny too. A report of a run recorded before this existed
reads the same facts from the model folder, when it is still there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from l2s_data.evaluate.protocols import EvalStore
from l2s_data.steer.selection import query

__all__ = ["TINY_HIDDEN", "MARKER", "identity_from_path", "model_identity", "describe_identity"]

#: A language model no wider than this is a test-sized model, whatever its card says.
TINY_HIDDEN = 256
#: The file a tiny checkpoint carries beside its config.
MARKER = "l2s_model.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def identity_from_path(path: str, *, fingerprint: str | None = None) -> dict[str, Any]:
    """The identity of the checkpoint folder ``path`` (see the module doc)."""
    root = Path(path)
    cfg = _read_json(root / "config.json")
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    marker = _read_json(root / MARKER)
    hidden = text.get("hidden_size")
    ident: dict[str, Any] = {
        "path": str(path), "found": bool(cfg), "model_type": cfg.get("model_type"),
        "hidden_size": hidden, "layers": text.get("num_hidden_layers"), "fingerprint": fingerprint,
        "tiny": bool(marker.get("tiny")) or (isinstance(hidden, int) and hidden <= TINY_HIDDEN),
        "weights": marker.get("weights"),
    }
    ident["warning"] = _warning(ident)
    return ident


def _warning(ident: dict[str, Any]) -> str | None:
    if not ident.get("tiny"):
        return None
    what = "random weights" if ident.get("weights") == "random" else (
        f"{ident['weights']} weights" if ident.get("weights") else "test-sized weights")
    return (f"This is a tiny checkpoint ({what}, hidden size {ident.get('hidden_size')}, "
            f"{ident.get('layers')} layers): its numbers show that the pipeline runs, not how a real "
            f"model steers. Do not read them as results.")


def model_identity(store: EvalStore, run_id: str, config: dict[str, Any]) -> dict[str, Any]:
    """The identity recorded with evaluation run ``run_id``, else read from its model path."""
    t = query(store, "SELECT metrics_json FROM runs WHERE run_id = ? AND kind = 'evaluate' "
                     "AND metrics_json IS NOT NULL", [run_id])
    for text in t["metrics_json"].to_pylist():
        got = json.loads(text).get("model") if text else None
        if isinstance(got, dict):
            got["warning"] = _warning(got)
            return got
    return identity_from_path(str(config.get("model", {}).get("path", "")))


def describe_identity(ident: dict[str, Any]) -> str:
    """One line: path, family, sizes, fingerprint, and "TINY" when it is."""
    parts = [str(ident.get("path"))]
    if ident.get("model_type"):
        parts.append(f"{ident['model_type']}, hidden {ident.get('hidden_size')}, {ident.get('layers')} layers")
    elif not ident.get("found", True):
        parts.append("(model files not found: family and sizes unknown)")
    if ident.get("fingerprint"):
        parts.append(f"weights {str(ident['fingerprint'])[:12]}")
    if ident.get("tiny"):
        parts.append("TINY" + (" RANDOM" if ident.get("weights") == "random" else "") + " checkpoint")
    return "; ".join(parts)
