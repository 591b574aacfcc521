"""``ModelAdapter``: one loaded MLLM with chat formatting, checks and capture (steering and
generation: :mod:`l2s_data.models.steering`).

Shapes: B items, R rows of a pass (B, or 3B for the contrastive views), L padded tokens,
D hidden size. Batches are left-padded; explicit position ids make every row compute what it
would compute alone (llava: positions counted from the first real token; qwen: M-RoPE ids
from ``get_rope_index`` over the padded batch).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from l2s_data.errors import InputError, LayerIndexError, PositionError, PromptTooLongError
from l2s_data.models import families
from l2s_data.models.encoding import Encoded, EncodedItems, encode, plan_sequences, position_weights, unpack_encoded
from l2s_data.models.fingerprint import digest, fingerprint_spec
from l2s_data.models.gather import Gather, StopForward, layer_hooks, to_cpu
from l2s_data.models.prefix import run_prefix_shared
from l2s_data.models.steering import SteeredGeneration
from l2s_data.models.types import POSITIONS, ChatInput, ContrastiveItem

__all__ = ["ModelAdapter"]


class ModelAdapter(SteeredGeneration):
    """A loaded model + processor of one family. Build it with :func:`load_adapter`.

    Steering and generation come from :class:`~l2s_data.models.steering.SteeredGeneration`."""

    def __init__(self, model, processor, family: str, *, path: str | Path | None = None,
                 attn_implementation: str = "eager"):
        self.model = model.eval()
        self.processor = processor
        self.family = family
        self.path = None if path is None else Path(path)
        self.attn_implementation = attn_implementation
        text = model.config.get_text_config()
        self.num_layers: int = int(text.num_hidden_layers)
        self.hidden_size: int = int(text.hidden_size)
        self.max_context: int = int(text.max_position_embeddings)
        param = next(model.parameters())
        self.device: torch.device = param.device
        self.dtype: torch.dtype = param.dtype
        self.layers = families.decoder_layers(model)
        self.image_token_id = families.image_token_id(model.config)
        if family == "llava" and getattr(processor, "patch_size", None) is None:
            # Older llava-hf processor configs lack these; transformers then derived them from
            # the model config (CLIP towers add one CLS token).
            processor.patch_size = model.config.vision_config.patch_size
            processor.vision_feature_select_strategy = model.config.vision_feature_select_strategy
            processor.num_additional_image_tokens = processor.num_additional_image_tokens or 1
        tok = processor.tokenizer
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        params = inspect.signature(model.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._fingerprint: str | None = None
        #: End capture forwards after the deepest requested layer (later layers cannot change
        #: earlier outputs). With a KV cache, the cache then holds only those layers, which is
        #: all the continuation reads because it stops at the same layer.
        self.stop_early: bool = True

    def __repr__(self) -> str:
        return (f"ModelAdapter(family={self.family!r}, layers={self.num_layers}, hidden={self.hidden_size}, "
                f"dtype={self.dtype}, device={self.device}, path={str(self.path)!r})")

    # --- fingerprint ---------------------------------------------------------------------

    def fingerprint_spec(self) -> dict:
        """The JSON-able components the fingerprint hashes (see :mod:`.fingerprint`)."""
        return fingerprint_spec(self)

    def fingerprint(self) -> str:
        """Hex digest of :meth:`fingerprint_spec`; stable across processes."""
        if self._fingerprint is None:
            self._fingerprint = digest(self.fingerprint_spec())
        return self._fingerprint

    # --- validation ----------------------------------------------------------------------

    def check_layers(self, layers: Sequence[int]) -> list[int]:
        out = []
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.num_layers:
                raise LayerIndexError(
                    f"layer {layer!r} is out of range: this {self.family} model has {self.num_layers} decoder "
                    f"layers, so expected an integer in [0, {self.num_layers - 1}] (0-based)."
                )
            out.append(int(layer))
        return out

    @staticmethod
    def check_positions(positions: Sequence[str]) -> list[str]:
        for p in positions:
            if p not in POSITIONS:
                raise PositionError(f"position {p!r} is unknown; expected one of {', '.join(POSITIONS)}.")
        return list(positions)

    def _check_encoded(self, enc: Encoded, positions: Sequence[str], what: str) -> None:
        if len(enc) > self.max_context:
            raise PromptTooLongError(
                f"{what}: the templated sequence has {len(enc)} tokens, more than the model's context of "
                f"{self.max_context} (max_position_embeddings). Shorten the query/suffix/completion "
                f"(query starts {enc.text[:60]!r})."
            )
        for p in positions:
            if p == "user_last":  # always readable: on the sequence, or on the user turn alone
                continue
            try:
                position_weights(enc, p)
            except PositionError as exc:
                raise PositionError(f"{what}: {exc}") from None

    def check(self, item: ChatInput | ContrastiveItem, *, layers: Sequence[int], positions: Sequence[str]) -> None:
        """Raise for ONE item what a capture would raise: :class:`PromptTooLongError`,
        :class:`LayerIndexError` or :class:`PositionError` (each names the bad value).

        For a :class:`ContrastiveItem`, completion positions are checked on the ``pos`` and
        ``neg`` views and the other positions on all three views.
        """
        self.check_layers(layers)
        positions = self.check_positions(positions)
        vision = families.process_images(self.family, self.processor, [item.image])
        if isinstance(item, ContrastiveItem):
            for view, chat in item.views().items():
                wanted = positions if view != "input" else [p for p in positions if not p.startswith("completion")]
                self._check_encoded(self.encode_chat(chat, vision.n_tokens[0]), wanted, f"view {view!r}")
        else:
            self._check_encoded(self.encode_chat(item, vision.n_tokens[0]), positions, "item")

    def check_encoded(self, encoded: EncodedItems, want: Mapping[str, Sequence[str]]) -> None:
        """Raise for the first item of ``encoded`` whose views cannot be read at ``want``
        (view -> positions): :class:`PromptTooLongError` or :class:`PositionError`."""
        for v, positions in want.items():
            for i, enc in enumerate(encoded.views[v]):
                self._check_encoded(enc, positions, f"view {v!r} of item {i}")

    # --- batching ------------------------------------------------------------------------

    def encode_chat(self, item: ChatInput, n_image_tokens: int) -> Encoded:
        """Tokenize one chat whose image expands to ``n_image_tokens`` tokens."""
        if not isinstance(item.query, str) or not isinstance(item.suffix, str):
            raise InputError(f"query and suffix must be strings, got {type(item.query).__name__} / "
                             f"{type(item.suffix).__name__}.")
        return encode(self.processor, item, n_image_tokens, self.image_token_id)

    def encode_items(self, items: Sequence[ChatInput]) -> tuple[list[Encoded], families.Vision]:
        """Tokenize ``items`` (one image-processor call for all images)."""
        vision = families.process_images(self.family, self.processor, [it.image for it in items])
        return [self.encode_chat(it, n) for it, n in zip(items, vision.n_tokens, strict=True)], vision

    def pad_left(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad token lists: ids [R, L], attention mask [R, L] (CPU)."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            if s:
                ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
                mask[r, width - len(s):] = 1
        return ids, mask

    def positions_for(self, ids: torch.Tensor, mask: torch.Tensor, vision: families.Vision | None,
                      images: Sequence[int]) -> torch.Tensor:
        grid = None if vision is None or vision.grid is None else vision.grid[list(images)]
        return families.position_ids(self.family, self.model, ids, mask, grid, self.image_token_id)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, *,
                vision_kwargs: dict | None = None, cache=None, use_cache: bool = False):
        """One forward of the base model (no LM head: logits are not needed to capture)."""
        dev = self.device
        kwargs = {"input_ids": ids.to(dev, non_blocking=True), "attention_mask": mask.to(dev, non_blocking=True),
                  "position_ids": pos.to(dev, non_blocking=True), "use_cache": use_cache}
        if cache is not None:
            kwargs[self._cache_kw] = cache
        for k, v in (vision_kwargs or {}).items():
            kwargs[k] = v.to(dev, dtype=self.dtype if v.is_floating_point() else v.dtype, non_blocking=True)
        try:
            return self.model.model(**kwargs)
        except StopForward:  # a capture hook has everything it needs (see stop_early)
            return None

    # --- capture -------------------------------------------------------------------------

    def run_sequence(self, gather: Gather, encs: Sequence[Encoded], reads: Sequence[tuple[tuple, str]],
                     vision: families.Vision) -> None:
        """One full left-padded forward of ``encs`` (row i = item i, image i); ``reads`` lists
        (gather key, position) pairs, each read into result row i of its key."""
        ids, mask = self.pad_left([e.ids for e in encs])
        images = list(range(len(encs)))
        pos = self.positions_for(ids, mask, vision, images)
        width = ids.shape[1]
        entries = {}
        for key, position in reads:
            src, dst, w = [], [], []
            for r, enc in enumerate(encs):
                base = r * width + (width - len(enc))
                for t, weight in position_weights(enc, position):
                    src.append(base + t)
                    dst.append(r)
                    w.append(weight)
            entries[key] = (src, dst, w)
        gather.set_pass(entries)
        with layer_hooks(self.layers, gather.hooks()):
            self.forward(ids, mask, pos, vision_kwargs=vision.take(images))

    @torch.inference_mode()
    def capture(self, items: Sequence[ChatInput], *, layers: Sequence[int], positions: Sequence[str],
                encoded: tuple[Sequence[Encoded], families.Vision] | None = None
                ) -> dict[tuple[str, int], torch.Tensor]:
        """Layer outputs at named positions: key (position, layer) -> float32 [B, D] on CPU.

        Row i is ``items[i]``; layer k is the output of decoder layer k (0-based). One
        left-padded forward for the whole batch (two when ``user_last`` is not a token of the
        sequences: see :func:`plan_sequences`).

        ``encoded``: :meth:`encode_items` of these items, when the caller encoded them already
        (a server reuses one encoding for the prompt check, the capture and the generation).
        """
        layers = self.check_layers(layers)
        positions = self.check_positions(positions)
        if not items:
            return {}
        encs, vision = self.encode_items(items) if encoded is None else unpack_encoded(encoded, len(items))
        for i, enc in enumerate(encs):
            self._check_encoded(enc, positions, f"item {i}")
        gather = Gather({(p,): (layers, len(items)) for p in positions}, self.hidden_size, self.device,
                        stop_early=self.stop_early)
        seqs, reads = plan_sequences({"item": encs}, {"item": positions}, key=lambda _v, p: (p,))
        for name, got in seqs.items():
            self.run_sequence(gather, got, reads[name], vision)
        out = {(key[0], layer): gather.get(key, layer) for key, layer in gather.keys()}
        return to_cpu(out)

    def encode_contrastive(self, items: Sequence[ContrastiveItem], views: Sequence[str]) -> EncodedItems:
        """Encoded views of every item (one image-processor call for all images)."""
        vision = families.process_images(self.family, self.processor, [it.image for it in items])
        encs: dict[str, list[Encoded]] = {v: [] for v in views}
        for it, n in zip(items, vision.n_tokens, strict=True):
            chats = it.views()
            for v in views:
                encs[v].append(self.encode_chat(chats[v], n))
        return EncodedItems(encs, vision)

    @torch.inference_mode()
    def capture_contrastive(self, items: Sequence[ContrastiveItem], *, input_layers: Sequence[int],
                            input_positions: Sequence[str], pair_layers: Sequence[int],
                            pair_positions: Sequence[str],
                            prefix_sharing: bool = True,
                            encoded: EncodedItems | None = None) -> dict[tuple[str, str, int], torch.Tensor]:
        """The ``input``, ``pos``, ``neg`` and ``p2s`` views of every item.

        Key (view, position, layer) -> float32 [B, D] on CPU, row i = ``items[i]``. ``input``
        keys use ``input_positions`` x ``input_layers``; ``pos``, ``neg`` and ``p2s`` use
        ``pair_positions`` x ``pair_layers``. ``p2s = pos - neg`` is taken in float32 on the
        device from the float32 gathers, before anything is down-cast or moved.

        ``prefix_sharing=True`` runs the common token prefix of the sequences once with a
        KV cache and the branches as continuations, pos and neg in one call
        (:mod:`l2s_data.models.prefix`); ``False`` runs one forward per sequence (the
        reference). Either way, forwards stop after the deepest requested layer
        (:attr:`stop_early`).

        ``encoded``: :meth:`encode_contrastive` of these items for the views asked for, when
        a caller ran the processor ahead (e.g. in a thread while the previous batch computed).
        """
        input_layers = self.check_layers(input_layers)
        pair_layers = self.check_layers(pair_layers)
        input_positions = self.check_positions(input_positions)
        pair_positions = self.check_positions(pair_positions)
        want = {"input": (input_layers, input_positions), "pos": (pair_layers, pair_positions),
                "neg": (pair_layers, pair_positions)}
        views = [v for v, (ls, ps) in want.items() if ls and ps]
        if not items or not views:
            return {}
        if encoded is None:
            encoded = self.encode_contrastive(items, views)
        if set(encoded.views) != set(views) or len(encoded) != len(items):
            raise InputError(f"encoded inputs hold views {sorted(encoded.views)} of {len(encoded)} items, but "
                             f"the layers and positions asked for need {sorted(views)} of {len(items)}; "
                             "encode the same items with the same views")
        self.check_encoded(encoded, {v: want[v][1] for v in views})
        b = len(items)
        keys = {(v, p): (want[v][0], b) for v in views for p in want[v][1]}
        gather = Gather(keys, self.hidden_size, self.device, stop_early=self.stop_early)
        seqs, reads = plan_sequences(encoded.views, {v: want[v][1] for v in views}, key=lambda v, p: (v, p))
        if prefix_sharing:
            run_prefix_shared(self, gather, seqs, encoded.vision, reads)
        else:
            for name, got in seqs.items():
                self.run_sequence(gather, got, reads[name], encoded.vision)
        out = {(v, p, layer): gather.get((v, p), layer) for (v, p), layer in gather.keys()}
        if "pos" in views:
            for p in pair_positions:
                for layer in pair_layers:
                    # float32 on the device: the difference of close vectors keeps its precision.
                    out[("p2s", p, layer)] = out[("pos", p, layer)] - out[("neg", p, layer)]
        return to_cpu(out)
