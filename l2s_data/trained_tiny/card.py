"""The trained tiny LLaVA's model card: what it was trained on, and what it does on held-out data.

``write_card(path, config, losses, seconds)`` reloads the written checkpoint (so the card's
fingerprint is the file's), answers held-out synthetic data greedily, unsteered and steered by
each sample's own contrastive vector (P2S*), and writes ``model_card.json`` and
``model_card.md`` beside the weights. Held-out means generated with :data:`CARD_DATA_SEED`,
which neither the training rows (data seed 10000 + seed) nor the demo (data seed 0) use.

Rates are shares of responses (the evaluation's phrase lists) with 95% Wilson intervals.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import PIL.Image

from l2s_data.datasets.categories import MMSB_SCENARIOS, SAFETY_LABELS
from l2s_data.datasets.synthetic import make_synthetic
from l2s_data.datasets.synthetic_safety import safety_item
from l2s_data.evaluate.metrics import pope_parse
from l2s_data.evaluate.texts import load_texts
from l2s_data.models.loading import load_adapter
from l2s_data.models.types import ChatInput, ContrastiveItem
from l2s_data.trained_tiny import data as td

__all__ = ["CARD_DATA_SEED", "CARD_ALPHA", "write_card", "read_card", "rate_entry", "wilson"]

CARD_DATA_SEED = 1
#: The steering strength of the card's P2S* rows.
CARD_ALPHA = 1.0
_PER_CATEGORY = 8      # held-out safety items per scenario
_SCENES = 120          # held-out shapes-POPE scenes (the demo's kind of questions; the first 40 of the
                       # card's data seed alone were easier than other sets: 0.725 vs 0.636-0.653)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a rate k/n ((0, 1) when n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def rate_entry(flags: list[bool]) -> dict[str, Any]:
    """``{"rate", "k", "n", "ci95"}`` of boolean outcomes (Wilson interval)."""

    k, n = sum(bool(f) for f in flags), len(flags)
    lo, hi = wilson(k, n)
    return {"rate": k / n if n else float("nan"), "k": k, "n": n, "ci95": [round(lo, 4), round(hi, 4)]}


def _image(data: bytes) -> PIL.Image.Image:
    return PIL.Image.open(io.BytesIO(data)).convert("RGB")


def _generate(adapter, chats, vectors, alpha, max_new_tokens, batch=32):
    out = []
    for i in range(0, len(chats), batch):
        part = chats[i:i + batch]
        if vectors is None:
            out += adapter.generate(part, max_new_tokens=max_new_tokens)
        else:
            with adapter.steering(vectors[1], vectors[0][i:i + batch], alpha):
                out += adapter.generate(part, max_new_tokens=max_new_tokens)
    return out


def _p2s(adapter, items: list[ContrastiveItem], layer: int):
    got = adapter.capture_contrastive(items, input_layers=[], input_positions=[], pair_layers=[layer],
                                      pair_positions=["completion_last"])
    return got[("p2s", "completion_last", layer)]


def held_out(steer_layer: int, adapter) -> dict[str, Any]:
    """Unsteered and P2S*-steered behaviour of ``adapter`` on the card's held-out data."""
    texts = load_texts()
    behavior = td.load_behavior(td.BEHAVIOR)
    items = [safety_item(i, CARD_DATA_SEED) for i in range(_PER_CATEGORY * len(MMSB_SCENARIOS))]
    images = [_image(png) for *_, png in items]
    chats = [ChatInput(im, q) for im, (_, _, q, _) in zip(images, items)]
    pairs = [behavior.pair_for(s) for s, *_ in items]
    v = _p2s(adapter, [ContrastiveItem(im, c.query, p.suffix, p.positive, p.negative)
                       for im, c, p in zip(images, chats, pairs)], steer_layer)
    safety: dict[str, Any] = {}
    for name, vectors in (("none", None), ("p2s", (v, steer_layer))):
        resp = _generate(adapter, chats, vectors, CARD_ALPHA, 16)
        per: dict[str, Any] = {}
        for cat in MMSB_SCENARIOS:
            rs = [r for (s, *_), r in zip(items, resp) if s == cat]
            per[cat] = {"refusal": rate_entry([texts.is_refusal(r) for r in rs]),
                        "deferral": rate_entry([texts.defers_to_expert(r) for r in rs]),
                        "example": rs[0] if rs else ""}
        refuse = [r for (s, *_), r in zip(items, resp) if SAFETY_LABELS[s] == "refuse"]
        defer = [r for (s, *_), r in zip(items, resp) if SAFETY_LABELS[s] == "defer"]
        safety[name] = {
            "refusal_on_refuse": rate_entry([texts.is_refusal(r) for r in refuse]),
            "ed_on_defer": rate_entry([texts.defers_to_expert(r) for r in defer]),
            "refusal_all": rate_entry([texts.is_refusal(r) for r in resp]),
            "deferral_all": rate_entry([texts.defers_to_expert(r) for r in resp]),
            "per_category": per,
        }
    with tempfile.TemporaryDirectory() as tmp:  # the demo's kind of questions: POPE's three subsets
        tables = make_synthetic("shapes-pope", tmp, n=_SCENES, seed=CARD_DATA_SEED)
        mem = tables.memberships.to_pylist()
        labels = {r["sample_id"]: r["label"] for r in mem}
        ids = sorted(labels)
        # one row per membership, as POPE counts: a "yes" question asked in all three subsets counts thrice
        weight = [sum(1 for r in mem if r["sample_id"] == sid) for sid in ids]
        qs = [(tables.load_image(sid).convert("RGB"), tables.query(sid), labels[sid] == "yes") for sid in ids]
    chats = [ChatInput(im, q) for im, q, _ in qs]
    v = _p2s(adapter, [ContrastiveItem(im, q, "", *(("Yes", "No") if t else ("No", "Yes"))) for im, q, t in qs],
             steer_layer)
    pope: dict[str, Any] = {}
    for name, vectors in (("none", None), ("p2s", (v, steer_layer))):
        said = [pope_parse(r) == "yes" for r in _generate(adapter, chats, vectors, CARD_ALPHA, 4)]
        said_yes = [y for y, w in zip(said, weight) for _ in range(w)]
        qs_w = [q for q, w in zip(qs, weight) for _ in range(w)]
        pope[name] = {
            "accuracy": rate_entry([y == t for y, (_, _, t) in zip(said_yes, qs_w)]),
            "yes_ratio": rate_entry(said_yes),
            "yes_on_present": rate_entry([y for y, (_, _, t) in zip(said_yes, qs_w) if t]),
            "yes_on_absent": rate_entry([y for y, (_, _, t) in zip(said_yes, qs_w) if not t]),
        }
    return {"data_seed": CARD_DATA_SEED, "alpha": CARD_ALPHA, "safety_items": len(items), "pope_samples": len(qs),
            "pope_questions": len(qs_w),
            "safety": safety, "pope": pope}


def write_card(path: str | Path, config: Any, losses: list[dict[str, float]], seconds: dict[str, float]) -> dict:
    """Evaluate the checkpoint at ``path`` and write its card; returns the card as a dict."""
    path = Path(path)
    adapter = load_adapter(path)
    every = max(1, len(losses) // 20)
    card = {
        "name": "tiny-llava-trained",
        "what": "A tiny LLaVA (LlavaForConditionalGeneration) trained on synthetic data so that steering "
                "measurably works; a toy that makes the method visible, not a replacement for a 7B model.",
        "fingerprint": adapter.fingerprint(),
        "seed": config.seed,
        "config": asdict(config),
        "data": {"training_data_seed": 10_000 + config.seed, "behavior": td.BEHAVIOR,
                 "safety_items": config.n_safety, "benign_items": config.n_benign, "pope_scenes": config.n_scenes,
                 "vision_data_seed": 20_000 + config.seed, "vision_scenes": config.vision_scenes,
                 "answers": {"comply": td.COMPLY, "refuse": td.REFUSE, "defer": td.DEFER},
                 "pope_unsteered_rule": "yes when an object of the asked colour is in the scene",
                 "pope_truth_suffix": td.LOOK_SUFFIX},
        "steps": len(losses),
        "losses": [losses[i] for i in range(0, len(losses), every)] + ([losses[-1]] if losses else []),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "held_out": held_out(config.steer_layer, adapter),
    }
    (path / "model_card.json").write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    (path / "model_card.md").write_text(card_markdown(card))
    return card


def read_card(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "model_card.json").read_text())


def _fmt(e: dict[str, Any]) -> str:
    return f"{e['rate']:.2f} [{e['ci95'][0]:.2f}, {e['ci95'][1]:.2f}] (n={e['n']})"


def card_markdown(card: dict[str, Any]) -> str:
    h, c = card["held_out"], card["config"]
    last = card["losses"][-1] if card["losses"] else {}
    lines = [
        "# tiny-llava-trained", "", card["what"], "",
        f"- fingerprint: `{card['fingerprint']}`",
        f"- seed {card['seed']}; {card['steps']} steps of batch {c['batch_size']}, lr {c['lr']}; hidden size "
        f"{c['hidden_size']}, {c['layers']} decoder layers; behaviour directions read and added at layer "
        f"{c['steer_layer']} (alpha drawn from {c['alpha_range']})",
        f"- training data (data seed {card['data']['training_data_seed']}): {c['n_safety']} synthetic-safety "
        f"items, {c['n_benign']} benign queries, shapes-POPE questions over {c['n_scenes']} scenes; first "
        f"{c['vision_steps']} steps of the vision tower and projector alone on the objects of "
        f"{c['vision_scenes']} other scenes (data seed {card['data']['vision_data_seed']})",
        f"- final losses: suffix questions {last.get('questions', float('nan')):.3f}, answers "
        f"{last.get('answers', float('nan')):.3f}; seconds: {card['seconds']}",
        "",
        f"## Held-out behaviour (data seed {h['data_seed']}; greedy; P2S* at alpha {h['alpha']}; 95% Wilson intervals)",
        "", "| metric | none | P2S* |", "|---|---|---|",
    ]
    s, p = h["safety"], h["pope"]
    for key, label in (("refusal_on_refuse", "refusal rate, scenarios to refuse"),
                       ("ed_on_defer", "ED score, expert scenarios")):
        lines.append(f"| {label} | {_fmt(s['none'][key])} | {_fmt(s['p2s'][key])} |")
    for key, label in (("accuracy", "POPE accuracy"), ("yes_ratio", "POPE yes-ratio"),
                       ("yes_on_present", "POPE yes on a present object"),
                       ("yes_on_absent", "POPE yes on an absent object (hallucination)")):
        lines.append(f"| {label} | {_fmt(p['none'][key])} | {_fmt(p['p2s'][key])} |")
    lines += ["", "Unsteered, per scenario:", "", "| scenario | refusal | deferral | example |", "|---|---|---|---|"]
    for cat, e in s["none"]["per_category"].items():
        lines.append(f"| {cat} | {_fmt(e['refusal'])} | {_fmt(e['deferral'])} | {e['example']!r} |")
    return "\n".join(lines) + "\n"
