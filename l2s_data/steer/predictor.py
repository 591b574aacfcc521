"""The L2S predictor g and its file: safetensors weights with the metadata that says what it fits.

::

    g = Predictor(d_in=4096, d_out=4096, hidden=100)     # Linear -> Tanh -> Linear(bias=False)
    save_predictor("run/predictor.safetensors", g, meta)
    g, meta = load_predictor("run/predictor.safetensors", input_recipe=rid_in, d_out=4096)

``g`` maps h_X (view ``input`` at layer L') to v_X (view ``p2s`` at layer L*), DESIGN.md section 1. The file's
metadata (a JSON string under ``l2s.predictor``) names the recipes and keys it read, L' and L*,
the dims, the resolved training config and the store snapshot id: loading checks the tensors
against it, and the caller's expectations against both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from l2s_data.errors import PredictorMismatchError

__all__ = ["Predictor", "PredictorMeta", "save_predictor", "load_predictor", "FILE_FORMAT"]

#: The value of the ``l2s.format`` metadata entry; bumped if the file layout changes.
FILE_FORMAT = "l2s-predictor/1"
_META_KEY = "l2s.predictor"


class Predictor(nn.Module):
    """``Linear(d_in, hidden) -> Tanh -> Linear(hidden, d_out, bias=False)``; float32."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 100):
        super().__init__()
        for name, v in (("d_in", d_in), ("d_out", d_out), ("hidden", hidden)):
            if not isinstance(v, int) or v < 1:
                raise PredictorMismatchError(f"Predictor {name} must be an int >= 1, got {v!r}.")
        self.d_in, self.d_out, self.hidden = d_in, d_out, hidden
        self.encoder = nn.Linear(d_in, hidden)
        self.decoder = nn.Linear(hidden, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, d_in]`` -> ``[B, d_out]``."""
        return self.decoder(torch.tanh(self.encoder(x)))


@dataclass(frozen=True)
class PredictorMeta:
    """What a predictor was trained on. Keys are dicts ``{recipe, view, position, layer}``
    whose ``recipe`` is the resolved recipe id (never a name: names can move)."""

    input_key: dict[str, Any]
    target_key: dict[str, Any]
    d_in: int
    d_out: int
    hidden: int
    snapshot_id: str
    run_id: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    #: category -> factor the targets of that category were multiplied by (target scaling).
    target_scales: dict[str, float] = field(default_factory=dict)

    @property
    def input_layer(self) -> int:
        """L': the layer h_X is read at."""
        return int(self.input_key["layer"])

    @property
    def steer_layer(self) -> int:
        """L*: the layer v_X is read at, and where steering adds alpha * g(h_X)."""
        return int(self.target_key["layer"])

    @property
    def recipe_ids(self) -> list[str]:
        return sorted({self.input_key["recipe"], self.target_key["recipe"]})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_layer"], d["steer_layer"] = self.input_layer, self.steer_layer
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, what: str) -> PredictorMeta:
        d = {k: v for k, v in d.items() if k not in ("input_layer", "steer_layer")}
        try:
            return cls(**d)
        except TypeError as exc:
            raise PredictorMismatchError(
                f"{what}: the predictor metadata does not match this l2s-data ({exc}); retrain it "
                f"with `l2s train`."
            ) from exc


def save_predictor(path: str | Path, model: Predictor, meta: PredictorMeta) -> Path:
    """Write ``model``'s weights and ``meta`` to one safetensors file; returns the path."""
    if (model.d_in, model.d_out, model.hidden) != (meta.d_in, meta.d_out, meta.hidden):
        raise PredictorMismatchError(
            f"predictor dims (d_in={model.d_in}, d_out={model.d_out}, hidden={model.hidden}) differ from "
            f"its metadata (d_in={meta.d_in}, d_out={meta.d_out}, hidden={meta.hidden}); build the meta "
            f"from the model being saved."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={
        "l2s.format": FILE_FORMAT,
        _META_KEY: json.dumps(meta.to_dict(), sort_keys=True),
    })
    return path


def _check_key(meta_key: dict[str, Any], want: dict[str, Any] | None, which: str, path: Path) -> None:
    if want is None:
        return
    for field_name, v in want.items():
        if v is None:
            continue
        have = meta_key.get(field_name)
        if (int(have) if field_name == "layer" else have) != (int(v) if field_name == "layer" else v):
            raise PredictorMismatchError(
                f"predictor {path} was trained with {which} {field_name} = {have!r}, but {v!r} was "
                f"asked for (its {which} key: {meta_key}). Use a predictor trained on that "
                f"{field_name}, or train one with `l2s train`."
            )


def load_predictor(path: str | Path, *, d_in: int | None = None, d_out: int | None = None,
                   input_key: dict[str, Any] | None = None,
                   target_key: dict[str, Any] | None = None) -> tuple[Predictor, PredictorMeta]:
    """Load a predictor, refusing one that does not fit.

    Args:
        d_in, d_out: the widths the caller will feed and add (the model's hidden size).
        input_key, target_key: partial keys (``{"recipe": id, "layer": 14}``, any of recipe /
            view / position / layer) the predictor must have been trained on.
    """
    path = Path(path)
    if not path.is_file():
        raise PredictorMismatchError(f"no predictor file at {path}; train one with `l2s train CONFIG`.")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PredictorMismatchError(f"{path} is not a readable safetensors file ({exc}).") from exc
    if header.get("l2s.format") != FILE_FORMAT or _META_KEY not in header:
        raise PredictorMismatchError(
            f"{path} is not an l2s-data predictor: its metadata has l2s.format = "
            f"{header.get('l2s.format')!r}, expected {FILE_FORMAT!r}. Save predictors with save_predictor."
        )
    meta = PredictorMeta.from_dict(json.loads(header[_META_KEY]), what=str(path))
    shapes = {"encoder.weight": (meta.hidden, meta.d_in), "encoder.bias": (meta.hidden,),
              "decoder.weight": (meta.d_out, meta.hidden)}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != shapes:
        raise PredictorMismatchError(
            f"{path}: tensors {got} do not match the dims in its metadata (d_in={meta.d_in}, "
            f"d_out={meta.d_out}, hidden={meta.hidden}) -> expected {shapes}. The file is damaged; retrain."
        )
    for name, want, have in (("d_in", d_in, meta.d_in), ("d_out", d_out, meta.d_out)):
        if want is not None and int(want) != have:
            what = "input width (h_X at L')" if name == "d_in" else "output width (v_X at L*)"
            raise PredictorMismatchError(
                f"predictor {path} has {name} = {have} ({what}), but {want} was asked for: it was trained "
                f"on a model of another hidden size. Use a predictor trained on this model's recipes."
            )
    _check_key(meta.input_key, input_key, "input", path)
    _check_key(meta.target_key, target_key, "target", path)
    model = Predictor(meta.d_in, meta.d_out, meta.hidden)
    model.load_state_dict(tensors)
    return model, meta
