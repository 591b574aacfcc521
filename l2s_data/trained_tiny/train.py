"""Train the tiny LLaVA on the synthetic sets, so that steering measurably works on a laptop.

``train_tiny(out_dir, seed=0)`` starts from the tiny LLaVA of :func:`~l2s_data.models.tiny.build_tiny`
(the real ``LlavaForConditionalGeneration``, its processor and chat template, 56x56 images),
trains it for a fixed number of steps on the rows of :mod:`l2s_data.trained_tiny.data`, and
writes the checkpoint (``save_pretrained``) with a model card (``model_card.md`` / ``.json``).
Deterministic per seed on the CPU at a fixed thread count. Every linear head named below is
trained with the model and dropped: the checkpoint is the plain llava-hf model.

Each step trains these at once, on a batch of safety, benign and POPE rows (every row's answer
weighs the same, however many tokens it has):

1. **The suffix questions** (teacher-forced): what the behaviours' contrastive pairs ask, with
   the answer the input deserves ("... safe or harmful?" -> "Harmful"). So the positive and
   negative completions mean something, and their activations differ along "this is harmful"
   (or "an expert should answer", or "the object is there").
2. **The unsteered answers**: comply to every safety query; POPE by colour (the hallucination).
3. **What a behaviour direction does** (the part a large model gets from pre-training): a batch
   row's contrastive difference at layer L*, ``v = h(pos) - h(neg)`` at the completion's last
   token, computed by the current model (detached where it is added), is added as ``alpha * v``
   at every position of layer L*'s output of another (or the same) row's plain prompt, with
   alpha drawn from [0.5, 2]; the target is the answer the *vector's* row should get (a refusal
   for a "Harmful - Safe" vector, the vector row's expert for "Expert - AI" / "Consult -
   Ignore", the vector row's true "Yes" / "No" on POPE). Rows given a random direction of the
   same norm keep their unsteered answer. So a vector, not the input, decides the behaviour: a
   single mean vector (Mean-S) pushes every input the same way, and an input-dependent one (L2S)
   can pick the right behaviour per input, which is what the method is about.
4. **Comparable directions.** The source rows' ``v`` keep their gradient here, and a loss pulls
   every ``|v|`` toward one norm (``norm_target``). Without it the "Expert - AI" differences grew
   ~17x longer than "Harmful - Safe" ones, so their mean (Mean-S) and any MSE-trained predictor
   were all expert direction.
5. **An input view that knows what the input is** (what a large model's h_X has from
   pre-training): a linear probe, trained with the model and then dropped, reads the plain
   prompt's last token at L* (before any steering) and must tell the answer the input should get
   (benign, refuse, which expert; POPE: the object is there or not). L2S predicts from this view.
6. **Eyes first** (what a large model's vision side has from pre-training): before all of the
   above, the vision tower and projector alone train for ``vision_steps`` on scenes of their own,
   until the mean of the projected image tokens tells which objects a scene shows; that head
   keeps training on the POPE rows' images afterwards. The projector reads the tower's last layer.
7. **A question bound to the image**: on POPE rows, the last prompt token at ``binding_layer``
   (below L*) must tell, through two linear heads, which object the question asks about and which
   objects and colours the scene shows, so the layers up to L* have both to compare. Without 6
   and 7 the model answered "Yes" to every POPE question and its h_X held no present/absent
   signal; with 6 alone it still did.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from l2s_data.datasets.shapes_pope import OBJECTS, question_for
from l2s_data.models.adapter import ModelAdapter
from l2s_data.models.families import Vision, process_images
from l2s_data.models.gather import layer_output
from l2s_data.models.tiny import TinyVision, build_tiny
from l2s_data.models.types import ChatInput
from l2s_data.trained_tiny import data as td
from l2s_data.trained_tiny.card import write_card

__all__ = ["TinyTrainConfig", "TrainedTiny", "train_tiny"]


@dataclass(frozen=True)
class TinyTrainConfig:
    seed: int = 0
    hidden_size: int = 64
    layers: int = 4
    steer_layer: int = 2          # L*: where the behaviour directions are read and added
    steps: int = 560
    batch_size: int = 16          # rows per step: half safety and benign, half POPE
    lr: float = 5e-3
    alpha_range: tuple[float, float] = (0.5, 2.0)
    steer_share: float = 0.5      # share of plain rows steered by a batch row's vector
    random_share: float = 0.15    # share steered by a random direction (answer unchanged)
    norm_target: float = 16.0     # every behaviour direction's norm is pulled toward this
    norm_weight: float = 1.0
    probe_weight: float = 1.0     # the plain prompt's last token at L* must tell the input's answer group
    threads: int = 1              # one thread: a second one made a step ~5x slower on a busy 2-core machine
    n_safety: int = 390
    n_benign: int = 60
    n_scenes: int = 120
    vision_feature_layer: int = -1  # the projector reads the CLIP tower's last layer (random checkpoints: -2)
    vision_steps: int = 400       # first phase: the vision tower and projector alone, on scene presence
    vision_scenes: int = 1000
    vision_batch: int = 32
    vision_lr: float = 5e-3
    presence_weight: float = 1.0  # the pooled image tokens tell which objects a POPE row's scene shows
    binding_weight: float = 1.0   # POPE: the last prompt token at binding_layer tells the asked object and
    binding_layer: int = 1        # the scene's objects and colours (linear heads, dropped after training)


@dataclass
class TrainedTiny:
    path: Path
    config: TinyTrainConfig
    losses: list[dict[str, float]]
    seconds: dict[str, float]
    card: dict[str, Any] = field(default_factory=dict)
    vision_losses: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class _Seq:
    ids: tuple[int, ...]
    target: tuple[int, int]       # [start, end) of the tokens predicted (answer + end of sequence)
    read: int                     # the token read as completion_last (the answer's last token)


class _Encoder:
    """Token sequences of the rows, built once with the adapter's own chat encoding."""

    def __init__(self, adapter: ModelAdapter, n_image_tokens: int, image: Any):
        self.adapter, self.n, self.image = adapter, n_image_tokens, image
        self.eos = adapter.processor.tokenizer.eos_token_id
        self._answers: dict[str, tuple[int, ...]] = {}

    def answer_ids(self, answer: str) -> tuple[int, ...]:
        if answer not in self._answers:
            enc = self.adapter.encode_chat(ChatInput(self.image, "x", completion=answer, continuation=()), self.n)
            a, b = enc.completion
            self._answers[answer] = enc.ids[a:b]
        return self._answers[answer]

    def prompt(self, query: str, suffix: str = "") -> tuple[int, ...]:
        return self.adapter.encode_chat(ChatInput(self.image, query, suffix), self.n).ids

    def seq(self, prompt: tuple[int, ...], answer: str) -> _Seq:
        ans = self.answer_ids(answer)
        ids = prompt + ans + (self.eos,)
        return _Seq(ids, (len(prompt), len(ids)), len(prompt) + len(ans) - 1)


def _image_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """The projected image tokens [N, T, D] the language model reads for ``pixels``."""
    out = model.model.get_image_features(pixel_values=pixels, vision_feature_layer=model.config.vision_feature_layer,
                                         vision_feature_select_strategy=model.config.vision_feature_select_strategy)
    return torch.stack(list(out.pooler_output))


def _train_vision(model, processor, head: torch.nn.Module, cfg: "TinyTrainConfig") -> list[dict[str, float]]:
    """First phase: the vision tower and projector alone learn which objects a scene shows (a
    linear head on the mean of the projected image tokens), on scenes of their own. Without it the
    language model never learned to bind a question's object to the image in the few minutes of
    training: it answered "Yes" to every shapes-POPE question."""
    scenes = td.vision_scenes(cfg.seed, cfg.vision_scenes)
    pixels = process_images("llava", processor, [im for _, im in scenes]).pixel_values
    target = torch.tensor([td.presence(objs) for objs, _ in scenes])
    params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters(),
              *head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=0.01)
    rng = random.Random(f"train-tiny-vision:{cfg.seed}")
    log = []
    for step in range(cfg.vision_steps):
        b = rng.sample(range(len(scenes)), cfg.vision_batch)
        loss = F.binary_cross_entropy_with_logits(head(_image_features(model, pixels[b]).mean(1)), target[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append({"step": step, "presence": loss.item()})
    return log


def _batch(adapter: ModelAdapter, seqs: Sequence[_Seq]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, mask = adapter.pad_left([s.ids for s in seqs])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


class _Stop(Exception):
    """Raised by the read hook when nothing after the read layer is needed."""


def _forward(model, adapter, seqs, pixels, *, delta=None, read_layer=None, probe=False, bind_layer=None):
    """``(hidden, ids, read, h_x, h_bind)``: the final hidden states [R, L, D] of the left-padded
    ``seqs`` (None when ``read_layer`` is asked for: the forward stops there), their ids, that
    layer's output at each row's read token (or None), with ``probe=True`` layer L*'s output
    (before ``delta``) at each row's last prompt token, the input view h_X (or None), and with
    ``bind_layer`` (below L*) that layer's output at the last prompt token (or None). ``delta``
    [R, D] is added to layer L*'s output at every position."""
    ids, mask, pos = _batch(adapter, seqs)
    handles, got = [], {}
    if bind_layer is not None:
        def keep_bind(_m, _a, out):
            got["b"] = layer_output(out)
        handles.append(adapter.layers[bind_layer].register_forward_hook(keep_bind))
    if probe:  # registered first: it sees the layer's output before the steering hook adds delta
        def keep_input(_m, _a, out):
            got["x"] = layer_output(out)
        handles.append(adapter.layers[model._tiny_steer_layer].register_forward_hook(keep_input))
    if delta is not None:
        def add(_m, _a, out):
            h = layer_output(out) + delta[:, None, :]
            return (h, *out[1:]) if isinstance(out, tuple) else h
        handles.append(adapter.layers[model._tiny_steer_layer].register_forward_hook(add))
    if read_layer is not None:
        def keep(_m, _a, out):
            got["h"] = layer_output(out)
            raise _Stop
        handles.append(adapter.layers[read_layer].register_forward_hook(keep))
    hidden = None
    try:
        hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=pixels,
                             use_cache=False).last_hidden_state
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    width, rows = ids.shape[1], torch.arange(len(seqs))
    read = h_x = h_bind = None
    if read_layer is not None:
        read = got["h"][rows, torch.tensor([width - len(s.ids) + s.read for s in seqs])]
    last = torch.tensor([width - len(s.ids) + s.target[0] - 1 for s in seqs])
    if probe:
        h_x = got["x"][rows, last]
    if bind_layer is not None:
        h_bind = got["b"][rows, last]
    return hidden, ids, read, h_x, h_bind


def _loss(model, hidden: torch.Tensor, ids: torch.Tensor, seqs: Sequence[_Seq]) -> torch.Tensor:
    """Cross-entropy of the target tokens, averaged per row, then over rows; the LM head runs on
    the predicting positions only."""
    width = ids.shape[1]
    rows, cols = [], []
    for r, s in enumerate(seqs):
        off = width - len(s.ids)
        for t in range(s.target[0], s.target[1]):
            rows.append(r)
            cols.append(off + t)
    rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
    logits = model.lm_head(hidden[rows_t, cols_t - 1])
    per_token = F.cross_entropy(logits, ids[rows_t, cols_t], reduction="none")
    # each row weighs the same: a two-token "Yes" counts as much as a fifteen-token refusal
    per_row = torch.zeros(len(seqs)).index_add_(0, rows_t, per_token)
    return (per_row / torch.bincount(rows_t, minlength=len(seqs)).clamp(min=1)).mean()


def train_tiny(out_dir: str | Path, *, seed: int = 0, config: TinyTrainConfig | None = None,
               progress: Callable[[int, int, float], None] | None = None, card: bool = True,
               stop_after: int | None = None) -> TrainedTiny:
    """Train the tiny LLaVA (see the module docstring) and write it, with its card, to ``out_dir``.

    ``progress(step, steps, loss)`` is called after every step. ``card=False`` skips the
    held-out evaluation of the card (the weights are the same). ``stop_after=k`` runs only the
    first k steps of the configured schedule and writes nothing: its losses are the first k of a
    whole run's, which is how a quick check compares a run against a card.
    """
    if stop_after is not None and not 0 < stop_after <= (config or TinyTrainConfig()).steps:
        raise ValueError(f"stop_after must be between 1 and the configured steps; got {stop_after}")
    cfg = config or TinyTrainConfig(seed=seed)
    if config is not None and seed != cfg.seed:
        cfg = TinyTrainConfig(**{**asdict(cfg), "seed": seed})
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(Path(out_dir), cfg, progress, card, stop_after)
    finally:
        torch.set_num_threads(threads)


#: What the plain prompt's last token at L* is trained to tell (a linear probe of h_X): the
#: answer the input should get. A large model's pre-training gives its h_X such content; here a
#: linear head, trained with the model and then dropped, asks for it.
_GROUPS = ("benign", "refuse", *td.DEFER, "pope:Yes", "pope:No")


def _answer_group(row: td.Row) -> int:
    if row.task == "pope":
        return _GROUPS.index(f"pope:{row.desired}")
    if row.task == "benign":
        return 0
    return _GROUPS.index(row.category) if row.category in td.DEFER else 1


def _train(out: Path, cfg: TinyTrainConfig, progress, card: bool, stop_after: int | None) -> TrainedTiny:
    t0 = time.perf_counter()
    rows = td.build_rows(cfg.seed, n_safety=cfg.n_safety, n_benign=cfg.n_benign, n_scenes=cfg.n_scenes)
    model, processor = build_tiny("llava", seed=cfg.seed, hidden_size=cfg.hidden_size, layers=cfg.layers,
                                  words=td.vocabulary(), vision=TinyVision(feature_layer=cfg.vision_feature_layer))
    model._tiny_steer_layer = cfg.steer_layer
    adapter = ModelAdapter(model, processor, "llava")
    vision: Vision = process_images("llava", processor, [r.image for r in rows])
    pixels = vision.pixel_values
    enc = _Encoder(adapter, vision.n_tokens[0], rows[0].image)
    plain = [enc.prompt(r.query) for r in rows]
    questions = [[enc.seq(enc.prompt(r.query, sfx), ans) for sfx, ans in r.questions] for r in rows]
    pairs = [None if r.pair is None else (enc.seq(enc.prompt(r.query, r.pair[0]), r.pair[1]),
                                          enc.seq(enc.prompt(r.query, r.pair[0]), r.pair[2])) for r in rows]
    present = torch.tensor([td.presence(r.objects) for r in rows])
    scene = torch.cat([present, torch.tensor([td.colours_present(r.objects) for r in rows])], 1)
    asked = torch.tensor([next((k for k, o in enumerate(OBJECTS) if question_for(o) == r.query), -1) for r in rows])
    t_data = time.perf_counter() - t0

    torch.manual_seed(cfg.seed)
    model.train()
    # linear heads trained with the model and then dropped (not saved)
    probe_head = torch.nn.Linear(cfg.hidden_size, len(_GROUPS))
    presence_head = torch.nn.Linear(cfg.hidden_size, len(OBJECTS))
    asked_head = torch.nn.Linear(cfg.hidden_size, len(OBJECTS))
    scene_head = torch.nn.Linear(cfg.hidden_size, len(OBJECTS) + len(td.COLOURS))
    t1 = time.perf_counter()
    vision_losses = _train_vision(model, processor, presence_head, cfg)
    t_vision = time.perf_counter() - t1

    rng = random.Random(f"train-tiny:{cfg.seed}")
    answer_group = torch.tensor([_answer_group(r) for r in rows])
    heads = [probe_head, presence_head, asked_head, scene_head]
    opt = torch.optim.AdamW([*model.parameters(), *(p for h in heads for p in h.parameters())], lr=cfg.lr,
                            weight_decay=0.01)
    warm = max(1, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    by_task = {t: [i for i, r in enumerate(rows) if r.task == t] for t in ("safety", "benign", "pope")}
    sources = {"safety": by_task["safety"], "benign": by_task["safety"], "pope": by_task["pope"]}
    half = cfg.batch_size // 2
    losses: list[dict[str, float]] = []
    t2 = time.perf_counter()
    for step in range(cfg.steps if stop_after is None else stop_after):
        safe_rows = rng.sample(by_task["safety"] + by_task["benign"], half)
        batch = safe_rows + rng.sample(by_task["pope"], cfg.batch_size - half)
        # 1. the suffix questions
        qseqs = [rng.choice(questions[i]) for i in batch]
        hidden, ids, _, _, _ = _forward(model, adapter, qseqs, pixels[batch])
        loss_q = _loss(model, hidden, ids, qseqs)
        # 3. behaviour directions of this batch's source rows (current model); their norms are
        # pulled toward one target, so that no behaviour's direction dwarfs another's
        src_rows = [i for i in batch if pairs[i] is not None]
        both = [pairs[i][0] for i in src_rows] + [pairs[i][1] for i in src_rows]
        _, _, h, _, _ = _forward(model, adapter, both, pixels[src_rows + src_rows], read_layer=cfg.steer_layer)
        n_src = len(src_rows)
        v_all = h[:n_src] - h[n_src:]
        loss_n = (torch.log(v_all.norm(dim=1) / cfg.norm_target) ** 2).mean()
        vec = {i: v_all[k].detach() for k, i in enumerate(src_rows)}
        # 2 + 3. plain prompts, unsteered, steered by a batch row's vector, or by a random one
        delta = torch.zeros(len(batch), cfg.hidden_size)
        pseqs = []
        for r, i in enumerate(batch):
            row, u = rows[i], rng.random()
            cands = [j for j in src_rows if j in sources[row.task]]
            answer = row.default
            if cands and u < cfg.steer_share + cfg.random_share:
                # as many refusal as deferral vectors (deferral scenarios are 3 of 13)
                groups = [g for g in ([j for j in cands if rows[j].desired == td.REFUSE],
                                      [j for j in cands if rows[j].desired != td.REFUSE]) if g]
                j = rng.choice(rng.choice(groups))
                alpha = rng.uniform(*cfg.alpha_range)
                v = vec[j]
                if u < cfg.steer_share:
                    answer = rows[j].desired
                else:
                    g = torch.Generator().manual_seed(rng.randrange(2**31))
                    d = torch.randn(cfg.hidden_size, generator=g)
                    v = d / d.norm() * v.norm()
                delta[r] = alpha * v
            pseqs.append(enc.seq(plain[i], answer))
        hidden, ids, _, hx, hb = _forward(model, adapter, pseqs, pixels[batch], delta=delta, probe=True,
                                          bind_layer=cfg.binding_layer)
        loss_p = _loss(model, hidden, ids, pseqs)
        loss_x = F.cross_entropy(probe_head(hx), answer_group[batch])
        # POPE rows: the scene's objects from the pooled image tokens; the asked object, and the
        # scene's objects and colours, from the last prompt token below L* (so that L* can compare
        # them: the truth, and the colour rule of the unsteered answer)
        pope = [r for r, i in enumerate(batch) if rows[i].task == "pope"]
        pope_rows = [batch[r] for r in pope]
        loss_v = F.binary_cross_entropy_with_logits(
            presence_head(_image_features(model, pixels[pope_rows]).mean(1)), present[pope_rows])
        loss_b = (F.cross_entropy(asked_head(hb[pope]), asked[pope_rows])
                  + F.binary_cross_entropy_with_logits(scene_head(hb[pope]), scene[pope_rows]))
        loss = (loss_q + loss_p + cfg.norm_weight * loss_n + cfg.probe_weight * loss_x
                + cfg.presence_weight * loss_v + cfg.binding_weight * loss_b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append({"step": step, "questions": loss_q.item(), "answers": loss_p.item(),
                       "norms": loss_n.item(), "probe": loss_x.item(), "presence": loss_v.item(),
                       "binding": loss_b.item()})
        if progress is not None:
            progress(step + 1, cfg.steps, loss.item())
    seconds = {"data": t_data, "vision": t_vision, "train": time.perf_counter() - t2}
    if stop_after is not None:
        return TrainedTiny(out, cfg, losses, seconds, vision_losses=vision_losses)
    model.eval()
    del model._tiny_steer_layer
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    result = TrainedTiny(out, cfg, losses, seconds, vision_losses=vision_losses)
    if card:
        t2 = time.perf_counter()
        result.card = write_card(out, cfg, losses, result.seconds)
        result.seconds["card"] = time.perf_counter() - t2
    return result
