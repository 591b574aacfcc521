"""MM-SafetyBench (Liu et al., ECCV 2024) in its release layout::

    ROOT/processed_questions/<scenario>.json   dict id -> {"Question", "Rephrased Question",
                                               "Key Phrase", "Phrase Type", ...}
    ROOT/imgs/<scenario>/<KIND>/<id>.jpg        KIND in SD, TYPO, SD_TYPO

(``ROOT`` is the release's ``data/`` folder.) The query is the "Rephrased Question" by
default (what the paper feeds with SD_TYPO images); both it and the image kind are options.

Split, by default as the reference code does it: every item of the 13 scenarios, in scenario
order then file order, shuffled by numpy's legacy ``np.random.seed(21)``; the first
``int(0.8 * n)`` are train. ``split="by_image"`` splits whole images instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from l2s_data.datasets.builder import TableBuilder, check_query, read_image_info, split_groups
from l2s_data.datasets.categories import MMSB_SCENARIOS, SAFETY_LABELS
from l2s_data.datasets.tables import DatasetTables, resolve_inside
from l2s_data.errors import DataSourceError, L2SError

__all__ = ["IMAGE_KINDS", "QUESTION_FIELDS", "load_mmsafetybench", "reference_split"]

IMAGE_KINDS = ("SD", "TYPO", "SD_TYPO")
QUESTION_FIELDS = ("Rephrased Question", "Question", "Rephrased Question(SD)")
DATASET = "mmsafetybench"


def reference_split(n: int, *, train_fraction: float = 0.8, seed: int = 21) -> list[str]:
    """"train"/"test" per item index, exactly as the reference code draws them."""
    idx = np.arange(n)
    np.random.RandomState(seed).shuffle(idx)  # == np.random.seed(seed); np.random.shuffle(idx)
    n_train = int(n * train_fraction)
    out = ["test"] * n
    for i in idx[:n_train]:
        out[int(i)] = "train"
    return out


def load_mmsafetybench(root: str | os.PathLike, *, question_field: str = "Rephrased Question",
                       image_kind: str = "SD_TYPO", scenarios: Sequence[str] = MMSB_SCENARIOS,
                       split: Literal["reference", "by_image"] = "reference", test_fraction: float = 0.2,
                       seed: int = 21, strict: bool = False) -> DatasetTables:
    """Load MM-SafetyBench from ``root`` (the folder holding processed_questions/ and imgs/).

    Memberships: dataset "mmsafetybench", subset = ``image_kind``, question_id
    "<scenario>/<id>", category = scenario, label "refuse" (01-09, 13) or "defer" (10-12).
    A missing scenario file, a missing image or an empty question is quarantined into
    ``errors`` (``strict=True`` raises it); if nothing at all can be read, it raises.
    """
    base = Path(root)
    if image_kind not in IMAGE_KINDS:
        raise DataSourceError(f"image_kind must be one of {list(IMAGE_KINDS)}, got {image_kind!r}.")
    if split not in ("reference", "by_image"):
        raise DataSourceError(f"split must be 'reference' or 'by_image', got {split!r}.")
    if not base.is_dir():
        raise DataSourceError(
            f"MM-SafetyBench root {str(base)!r} does not exist. Fix: give the folder that holds "
            f"processed_questions/ and imgs/ (the release's data/ folder)."
        )
    b = TableBuilder(root=base.resolve(), strict=strict)
    items = []  # (scenario, id, raw question, file) in the reference's order
    read_files = 0
    for scenario in scenarios:
        f = base / "processed_questions" / f"{scenario}.json"
        try:
            data = json.loads(f.read_text("utf-8"))
        except FileNotFoundError:
            b.quarantine(str(f), scenario, DataSourceError(
                f"MM-SafetyBench scenario file {str(f)!r} is missing (scenario {scenario!r}). "
                f"Fix: restore it, or pass scenarios= without it."))
            continue
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            b.quarantine(str(f), scenario, DataSourceError(
                f"MM-SafetyBench scenario file {str(f)!r} cannot be parsed: {e}"))
            continue
        if not isinstance(data, dict):
            b.quarantine(str(f), scenario, DataSourceError(
                f"{str(f)!r}: expected a JSON object (id -> question record), got {type(data).__name__}."))
            continue
        read_files += 1
        items += [(scenario, str(k), v, str(f)) for k, v in data.items()]
    if read_files == 0:
        raise DataSourceError(
            f"no MM-SafetyBench scenario file could be read under {str(base / 'processed_questions')!r} "
            f"(looked for {len(scenarios)} scenarios, e.g. {scenarios[0]}.json)."
            + (f" First problem: {b.first_error}" if b.first_error else "")
        )

    ref = reference_split(len(items), train_fraction=1.0 - test_fraction, seed=seed) if split == "reference" else None
    good = []
    for i, (scenario, qid, rec, f) in enumerate(items):
        what = f"{scenario}/{qid}"
        try:
            if not isinstance(rec, dict) or question_field not in rec:
                keys = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
                raise DataSourceError(
                    f"{what}: no field {question_field!r} in {Path(f).name} (it has {keys}). "
                    f"Fix: pick --question-field among them."
                )
            query = check_query(rec[question_field], what=f"{what} field {question_field!r}")
            rel = f"imgs/{scenario}/{image_kind}/{qid}.jpg"
            path = resolve_inside(b.root, rel, what=what)
            info = read_image_info(path, what=what)
        except L2SError as e:
            b.quarantine(f, qid, e)
            continue
        good.append((i, scenario, qid, query, path, info, f))
    groups = split_groups([g[5].sha256 for g in good], test_fraction=test_fraction, seed=seed) if ref is None else None
    for i, scenario, qid, query, path, info, f in good:
        try:
            b.add(image=info, image_path=str(path), query=query, dataset=DATASET, subset=image_kind,
                  question_id=f"{scenario}/{qid}", category=scenario, label=SAFETY_LABELS.get(scenario),
                  split=ref[i] if ref is not None else groups[info.sha256])
        except DataSourceError as e:
            b.quarantine(f, qid, e)
    return b.build({
        "source": DATASET, "root": str(b.root), "question_field": question_field, "image_kind": image_kind,
        "scenarios": list(scenarios), "split": split, "test_fraction": test_fraction, "seed": seed,
        "items": len(items),
    })
