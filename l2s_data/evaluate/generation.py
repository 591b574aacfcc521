"""Steered generation: a method's vectors for a batch, then batched generation through the
adapter's steering hook (left padding, KV cache; greedy by default, seeded sampling optional).

Shapes: B items of a batch, D the model's hidden size. Every vector is float32 ``[B, D]``.

::

    sources = VectorSources(steer_layer=1, input_layer=3, predictor=g, cache=ActivationCache(...))
    gen = SteeredGenerator(adapter, sources, max_new_tokens=32)
    v = gen.vectors(get_method("l2s"), items)          # made before any steering
    for alpha in (0.5, 1.0, 2.2):
        texts = gen.generate(get_method("l2s"), alpha, items, vectors=v)

Where each vector comes from:

- ``l2s``: h_X, the ``input`` view at layer L' and ``input_position``, is read from the
  activation cache when the sample is there, and otherwise captured by an **unsteered**
  prefill. The prediction is made before the steering hook is installed, because L' can be
  deeper than L* (the reference's safety LLaVA reads L' = 30 and steers L* = 15): a capture
  under steering would read a steered h_X.
- ``p2s`` (P2S*) and ``norm-rnd``: the sample's P2S vector at L* from the cache, else
  computed from the sample's contrastive pair (``EvalItem.pair``), unsteered.
  (:mod:`l2s_data.evaluate.sources` holds the cache and the sources.)
- ``mean-s`` / ``mean-s-ba``: one [D] vector each, given by the caller (see
  :mod:`l2s_data.evaluate.vectors` for computing them from the cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import PIL.Image
import torch

from l2s_data.errors import ConfigError, KeyNotFoundError
from l2s_data.evaluate.methods import Method
from l2s_data.evaluate.protocols import EvalModel
from l2s_data.evaluate.sources import VectorSources
from l2s_data.evaluate.texts import PromptOnly, load_texts
from l2s_data.models.types import ChatInput, ContrastiveItem
from l2s_data.steer.baselines import norm_rnd_of

__all__ = ["EvalItem", "SteeredGenerator"]


@dataclass(frozen=True)
class EvalItem:
    """One sample to answer: its image and query, the task ("safety" / "pope") that picks the
    prompt-only instruction, and its contrastive pair (suffix, positive, negative) if known."""

    sample_id: str
    image: PIL.Image.Image
    query: str
    task: str = "safety"
    pair: tuple[str, str, str] | None = None


class SteeredGenerator:
    """Steered, batched generation of one model for the methods of :mod:`.methods`."""

    def __init__(self, adapter: EvalModel, sources: VectorSources, *, max_new_tokens: int = 64,
                 do_sample: bool = False, seed: int | None = None,
                 prompt_only: dict[str, PromptOnly] | None = None, max_new_tokens_unsteered: int | None = None):
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens = {max_new_tokens}: expected at least 1.")
        adapter.check_layers([sources.steer_layer])
        if sources.input_layer is not None:
            adapter.check_layers([sources.input_layer])
        self.adapter = adapter
        self.sources = sources
        self.max_new_tokens = max_new_tokens
        # none and prompt-only: their own budget (the reference's POPE: 100 against 128 steered)
        self.max_new_tokens_unsteered = max_new_tokens_unsteered or max_new_tokens
        self.do_sample = do_sample
        self.seed = seed
        if prompt_only is None:
            prompt_only = dict(load_texts().prompt_only)
        self.prompt_only = prompt_only

    # --- inputs --------------------------------------------------------------------------

    def chat_inputs(self, method: Method, items: Sequence[EvalItem]) -> list[Any]:
        """The model inputs of ``items`` under ``method`` (prompt-only rewrites the query)."""
        out = []
        for it in items:
            query = it.query
            if method.name == "prompt-only":
                if it.task not in self.prompt_only:
                    raise ConfigError(f"sample {it.sample_id}: no prompt-only instruction for task {it.task!r}; "
                                      f"expected one of {sorted(self.prompt_only)}.")
                query = self.prompt_only[it.task].apply(query)
            out.append(ChatInput(it.image, query))
        return out

    def encode(self, method: Method, items: Sequence[EvalItem]) -> Any:
        """The adapter's encoding of ``chat_inputs(method, items)`` (tokens and processed
        images): hand it to :meth:`vectors` and to every :meth:`generate` of the same method
        and items, which then encode nothing again."""
        return self.adapter.encode_items(self.chat_inputs(method, items))

    # --- vectors (always computed unsteered) ----------------------------------------------

    def input_states(self, items: Sequence[EvalItem], *, encoded: Any = None) -> torch.Tensor:
        """h_X ``[B, D]``: the input view at L', from the cache or an unsteered prefill.

        ``encoded``: the adapter's ``encode_items`` of the items' plain chats (``chat_inputs``
        of method ``none``), when the caller has it: the prefill then encodes nothing again."""
        src = self.sources
        if src.input_layer is None:
            raise ConfigError("L2S needs the predictor's input layer L' (input_layer); set it in the config.")

        def prefill(rows: list[int], position: str, layer: int) -> torch.Tensor:
            chats = self.chat_inputs(_PLAIN, [items[i] for i in rows])
            kw = {} if encoded is None else {"encoded": ([encoded[0][i] for i in rows], encoded[1].select(rows))}
            return self.adapter.capture(chats, layers=[layer], positions=[position], **kw)[(position, layer)]

        return self._cached_or(items, "input", src.input_position, src.input_layer, prefill)

    def p2s(self, items: Sequence[EvalItem]) -> torch.Tensor:
        """The samples' own P2S vectors ``[B, D]`` at L*, from the cache or their pairs."""
        src = self.sources
        by: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            by.setdefault(src.pair_position_of.get(it.sample_id, src.pair_position), []).append(i)
        if len(by) == 1:
            return self._cached_or(items, "p2s", next(iter(by)), src.steer_layer, self._contrast_of(items))
        out = torch.empty(len(items), self.adapter.hidden_size)
        for pos, idx in by.items():
            some = [items[i] for i in idx]
            out[idx] = self._cached_or(some, "p2s", pos, src.steer_layer, self._contrast_of(some))
        return out

    def _cached_or(self, items, view, position, layer, compute) -> torch.Tensor:
        ids = [it.sample_id for it in items]
        cached, found = (self.sources.cache.lookup(view, position, layer, ids) if self.sources.cache is not None
                         else (None, [False] * len(ids)))
        out = torch.empty(len(items), self.adapter.hidden_size)
        if cached is not None:
            if cached.shape[1] != self.adapter.hidden_size:
                raise ConfigError(f"the cached {view} rows at layer {layer} have {cached.shape[1]} dims, but the model's "
                                  f"hidden size is {self.adapter.hidden_size}: the cache recipe "
                                  f"{self.sources.cache.recipes[view]!r} belongs to another model.")
            out[torch.tensor(found)] = cached.float()
        rest = [i for i, f in enumerate(found) if not f]
        if rest:  # compute(rows of items, position, layer)
            out[rest] = compute(rest, position, layer).float()
        for i, sid in enumerate(ids):
            self.sources.provenance[sid] = "cache" if found[i] else "prefill"
        return out

    def _contrast_of(self, items):
        return lambda rows, position, layer: self._contrast([items[i] for i in rows], position, layer)

    def _contrast(self, items, position, layer) -> torch.Tensor:
        missing = [it.sample_id for it in items if it.pair is None]
        if missing:
            raise KeyNotFoundError(
                f"{len(missing)} sample(s) have no cached P2S vector at layer {layer} ({position}) and no "
                f"contrastive pair to compute one, e.g. {missing[:3]}. Extract the pair recipe for them, or "
                f"name a behavior in the evaluation config."
            )
        cis = [ContrastiveItem(it.image, it.query, *it.pair) for it in items]
        got = self.adapter.capture_contrastive(cis, input_layers=[], input_positions=[], pair_layers=[layer],
                                               pair_positions=[position])
        return got[("p2s", position, layer)]

    def vectors(self, method: Method, items: Sequence[EvalItem], *, encoded: Any = None) -> torch.Tensor | None:
        """The steering vectors ``[B, D]`` of ``method`` for ``items`` (None: no steering).

        ``encoded``: :meth:`encode` of ``method`` and ``items`` (read by L2S only, whose chats
        are the plain ones that :meth:`input_states` prefills)."""
        src = self.sources
        if not method.steers:
            return None
        b = len(items)
        if method.name in ("mean-s", "mean-s-ba"):
            v = src.mean_s if method.name == "mean-s" else src.mean_s_ba
            if v is None:
                raise ConfigError(f"method {method.label} needs its vector: compute it from the cache "
                                  f"(l2s_data.evaluate.vectors) or give a file in the config.")
            v = torch.as_tensor(v, dtype=torch.float32).reshape(-1)
            if v.shape[0] != self.adapter.hidden_size:
                raise ConfigError(f"method {method.label}: vector has {v.shape[0]} dims, the model's hidden "
                                  f"size is {self.adapter.hidden_size}.")
            return v.expand(b, -1).clone()
        if method.name == "l2s":
            if src.predictor is None:
                raise ConfigError("method L2S needs a trained predictor; give its file in the config.")
            h = self.input_states(items, encoded=encoded)
            with torch.no_grad():
                v = src.predictor.predict(h)
            v = torch.as_tensor(v, dtype=torch.float32)
            if tuple(v.shape) != (b, self.adapter.hidden_size):
                raise ConfigError(f"the L2S predictor returned shape {tuple(v.shape)}; expected "
                                  f"[{b}, {self.adapter.hidden_size}] (one vector per item, the model's width).")
            return v
        p2s = self.p2s(items)
        if src.pair_scales:
            p2s = p2s * torch.tensor([src.pair_scales.get(it.sample_id, 1.0) for it in items],
                                     dtype=torch.float32)[:, None]
        if method.name == "p2s":
            return p2s
        if method.name == "norm-rnd":
            # the same directions as training's offline evaluation
            return torch.from_numpy(norm_rnd_of([it.sample_id for it in items], p2s.numpy(), src.seed))
        raise ConfigError(f"method {method.name!r} has no vector rule")  # unreachable for the registry

    # --- generation ----------------------------------------------------------------------

    def generate(self, method: Method, alpha: float | None, items: Sequence[EvalItem], *,
                 vectors: torch.Tensor | None = None, encoded: Any = None) -> list[str]:
        """Responses to ``items`` under ``method`` at ``alpha`` (ignored for unsteered methods).

        ``vectors``: this batch's :meth:`vectors`, and ``encoded``: its :meth:`encode`, when
        the caller reuses them across alphas.
        """
        if not items:
            return []
        chats = self.chat_inputs(method, items)
        kw = dict(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, seed=self.seed)
        if encoded is not None:
            kw["encoded"] = encoded
        if not method.steers:
            return self.adapter.generate(chats, **{**kw, "max_new_tokens": self.max_new_tokens_unsteered})
        if alpha is None:
            raise ConfigError(f"method {method.label} steers: it needs an alpha.")
        v = self.vectors(method, items) if vectors is None else vectors
        with self.adapter.steering(self.sources.steer_layer, v, float(alpha)):
            return self.adapter.generate(chats, **kw)


_PLAIN = Method("none", "none", False, (), "")
