"""Hooks that read named positions out of decoder-layer outputs, on the device.

A :class:`Gather` owns one float32 accumulator [rows, D] per hooked layer. Each forward pass
("pass") declares, for every result row, which flat token indices of that pass's hidden
states [R, L, D] contribute and with which weight (1.0 for a single token, 1/n for a mean).
The hook then does one ``index_select`` and one ``index_add_`` per layer: no per-row Python in
the hot path, nothing leaves the device until :meth:`results`. A position may be split across
passes (prefix and continuation), because contributions are summed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

__all__ = ["Gather", "StopForward", "layer_hooks", "layer_output"]


class StopForward(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a gather hook after the deepest layer it needs: the rest of the model (later
    layers, final norm) cannot change what was captured, so the forward ends there."""

Key = tuple  # (view, position) or (position,)


def layer_output(output) -> torch.Tensor:
    """The hidden states of a decoder layer's output (a Tensor in 5.x, a tuple before)."""
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def layer_hooks(layers: torch.nn.ModuleList, fns: dict[int, callable]) -> Iterator[None]:
    """Register ``fns[k](hidden)`` as a forward hook on decoder layer ``k`` for the block."""
    handles = []
    try:
        for k, fn in fns.items():
            handles.append(layers[k].register_forward_hook(lambda _m, _a, out, fn=fn: fn(layer_output(out))))
        yield
    finally:
        for h in handles:
            h.remove()


class Gather:
    """Accumulate ``[n_rows, D]`` float32 vectors per (key, layer) from hooked layer outputs.

    ``keys`` maps each key to (its layers, its number of rows).
    """

    def __init__(self, keys: dict[Key, tuple[Sequence[int], int]], hidden: int, device: torch.device,
                 *, stop_early: bool = False):
        self.device = device
        self.stop_early = stop_early
        self.layers = sorted({layer for layers, _ in keys.values() for layer in layers})
        self.offset: dict[tuple[Key, int], tuple[int, int]] = {}
        sizes: dict[int, int] = dict.fromkeys(self.layers, 0)
        for key, (layers, rows) in keys.items():
            for layer in layers:
                self.offset[(key, layer)] = (sizes[layer], sizes[layer] + rows)
                sizes[layer] += rows
        self.acc = {layer: torch.zeros(n, hidden, dtype=torch.float32, device=device) for layer, n in sizes.items()}
        self._keys = keys
        self._plan: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    def set_pass(self, entries: dict[Key, tuple[list[int], list[int], list[float]]]) -> None:
        """Declare the next pass: per key, (flat source indices, result rows, weights)."""
        by_layers: dict[tuple[int, ...], tuple] = {}
        self._plan = {}
        for layer in self.layers:
            src, dst, w = [], [], []
            for key, (s, r, ws) in entries.items():
                if (key, layer) not in self.offset or not s:
                    continue
                base = self.offset[(key, layer)][0]
                src.extend(s)
                dst.extend(base + x for x in r)
                w.extend(ws)
            if not src:
                continue
            sig = (tuple(src), tuple(dst), tuple(w))
            if sig not in by_layers:  # layers with the same keys share index tensors
                weights = None if all(x == 1.0 for x in w) else torch.tensor(w, dtype=torch.float32)
                by_layers[sig] = (
                    torch.tensor(src, dtype=torch.long).to(self.device, non_blocking=True),
                    torch.tensor(dst, dtype=torch.long).to(self.device, non_blocking=True),
                    None if weights is None else weights.to(self.device, non_blocking=True)[:, None],
                )
            self._plan[layer] = by_layers[sig]

    def hooks(self) -> dict[int, callable]:
        return {layer: (lambda h, layer=layer: self._collect(layer, h)) for layer in self.layers}

    def _collect(self, layer: int, hidden: torch.Tensor) -> None:
        plan = self._plan.get(layer)
        if plan is not None:
            src, dst, w = plan
            # Up-cast only the gathered rows: the float32 sums and differences happen before
            # any down-cast, whatever the compute dtype.
            picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, src).float()
            if w is not None:
                picked = picked * w
            self.acc[layer].index_add_(0, dst, picked)
        if self.stop_early and layer == self.layers[-1]:
            raise StopForward

    def get(self, key: Key, layer: int) -> torch.Tensor:
        start, end = self.offset[(key, layer)]
        return self.acc[layer][start:end]

    def keys(self) -> Iterator[tuple[Key, int]]:
        return iter(self.offset)


def to_cpu(tensors: dict) -> dict:
    """Move a dict of same-width device tensors to the CPU with one transfer."""
    if not tensors:
        return {}
    names = list(tensors)
    flat = torch.cat([tensors[n] for n in names]).cpu()
    out, start = {}, 0
    for n in names:
        rows = tensors[n].shape[0]
        out[n] = flat[start : start + rows]
        start += rows
    return out
