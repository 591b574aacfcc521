"""POPE (Li et al., EMNLP 2023) in its official line-JSON format.

Each question file holds one JSON object per line::

    {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?", "label": "yes"}

The three COCO files (``coco_pope_{random,popular,adversarial}.json``) hold 9,000 questions,
but only 5,127 distinct (image, query) pairs over 500 images: the "yes" questions repeat
across the three files. Images are resolved in a folder the user gives (COCO val2014).
Splits are made by image, so that no image is in both train and test.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from l2s_data.datasets.builder import ImageInfo, TableBuilder, check_query, read_image_info, split_groups
from l2s_data.datasets.categories import POPE_CATEGORY, POPE_SUBSETS
from l2s_data.datasets.tables import DatasetTables, resolve_inside
from l2s_data.errors import DataSourceError, L2SError

__all__ = ["POPE_LABELS", "PopeQuestion", "read_pope_file", "pope_files", "load_pope"]

POPE_LABELS = ("yes", "no")
DATASET = "pope"


@dataclass(frozen=True)
class PopeQuestion:
    """One parsed line of a POPE question file."""

    file: str
    line: int
    subset: str
    question_id: str
    image: str
    text: str
    label: str


def _subset_of(path: Path) -> str:
    """coco_pope_adversarial.json -> "adversarial" (the last "_"-separated word of the stem)."""
    stem = path.name.split(".")[0]
    return stem.rsplit("_", 1)[-1]


def read_pope_file(path: str | os.PathLike, *, subset: str | None = None,
                   on_error=None) -> list[PopeQuestion]:
    """Parse one question file. A malformed line raises :class:`DataSourceError` naming the
    file and line number, or, when ``on_error(file, item, error)`` is given, is handed to it
    and skipped."""
    p = Path(path)
    sub = subset or _subset_of(p)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise DataSourceError(f"POPE question file {str(p)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataSourceError(f"POPE question file {str(p)!r} cannot be read: {e}") from e
    out: list[PopeQuestion] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue  # trailing blank lines are harmless
        try:
            out.append(_parse_line(p, n, raw, sub))
        except DataSourceError as e:
            if on_error is None:
                raise
            on_error(str(p), f"line {n}", e)
    return out


def _parse_line(p: Path, n: int, raw: str, subset: str) -> PopeQuestion:
    where = f"{p.name} line {n}"
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataSourceError(f"{where}: not a JSON object ({e.msg} at column {e.colno}). File: {str(p)!r}.") from None
    if not isinstance(obj, dict):
        raise DataSourceError(f"{where}: expected a JSON object, got {type(obj).__name__}. File: {str(p)!r}.")
    missing = [k for k in ("question_id", "image", "text", "label") if k not in obj]
    if missing:
        raise DataSourceError(
            f"{where}: missing key(s) {missing}; expected question_id, image, text, label. File: {str(p)!r}."
        )
    qid, image, label = obj["question_id"], obj["image"], obj["label"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or str(qid) == "":
        raise DataSourceError(f"{where}: question_id must be an integer or a string, got {qid!r}.")
    if not isinstance(image, str) or not image:
        raise DataSourceError(f"{where}: image must be a non-empty file name, got {image!r}.")
    if label not in POPE_LABELS:
        raise DataSourceError(f"{where}: label must be 'yes' or 'no', got {label!r}. File: {str(p)!r}.")
    text = check_query(obj["text"], what=f"{where} (question {qid})")
    return PopeQuestion(str(p), n, subset, str(qid), image, text, label)


def pope_files(questions: str | os.PathLike | Iterable[str | os.PathLike],
               subsets: Sequence[str] = POPE_SUBSETS) -> list[Path]:
    """The question files: a folder (``coco_pope_<subset>.json`` for each subset), one file, or a list."""
    if isinstance(questions, (str, os.PathLike)):
        q = Path(questions)
        if q.is_dir():
            files = []
            for s in subsets:
                cands = [q / f"coco_pope_{s}.json", q / f"coco_pope_{s}.jsonl"]
                found = next((c for c in cands if c.is_file()), None)
                if found is None:
                    raise DataSourceError(
                        f"POPE subset {s!r}: no {cands[0].name} in {str(q)!r}. Fix: give the folder "
                        f"holding the official question files, or pick subsets that are there."
                    )
                files.append(found)
            return files
        if not q.is_file():
            raise DataSourceError(f"POPE questions {str(q)!r}: no such file or folder.")
        return [q]
    return [Path(x) for x in questions]


def load_pope(questions: str | os.PathLike | Iterable[str | os.PathLike], images: str | os.PathLike, *,
              subsets: Sequence[str] = POPE_SUBSETS, test_fraction: float = 0.2, seed: int = 0,
              strict: bool = False) -> DatasetTables:
    """Load POPE question files, resolving each ``image`` inside the folder ``images``.

    Returns tables whose ``image_path`` values are absolute (the user's image folder) and whose
    ``root`` is that folder. Splits: whole images (by content) go to train or test, with
    ``test_fraction`` of the images in test, drawn with ``seed``. Bad lines and bad images are
    quarantined into ``errors`` (file, line, reason); ``strict=True`` raises the first instead.
    """
    img_root = Path(images)
    if not img_root.is_dir():
        raise DataSourceError(
            f"POPE image folder {str(img_root)!r} does not exist. Fix: give the folder that holds "
            f"the COCO val2014 images (COCO_val2014_*.jpg)."
        )
    b = TableBuilder(root=img_root.resolve(), strict=strict)
    files = pope_files(questions, subsets)
    parsed: list[PopeQuestion] = []
    for f in files:
        parsed += read_pope_file(f, on_error=None if strict else b.quarantine)

    # Read each image once (500 images for 9,000 questions).
    infos: dict[str, tuple[Path, ImageInfo] | L2SError] = {}
    for q in parsed:
        if q.image in infos:
            continue
        what = f"{Path(q.file).name} line {q.line} (question {q.question_id})"
        try:
            path = resolve_inside(b.root, q.image, what=what)
            infos[q.image] = (path, read_image_info(path, what=what))
        except L2SError as e:
            infos[q.image] = e
    good = []
    for q in parsed:
        got = infos[q.image]
        if isinstance(got, L2SError):
            b.quarantine(q.file, f"line {q.line} (question {q.question_id}, image {q.image})", got)
        else:
            good.append((q, *got))
    splits = split_groups([info.sha256 for *_, info in good], test_fraction=test_fraction, seed=seed)
    for q, path, info in good:
        try:
            b.add(image=info, image_path=str(path), query=q.text, dataset=DATASET, subset=q.subset,
                  question_id=q.question_id, category=POPE_CATEGORY, label=q.label,
                  split=splits[info.sha256])
        except DataSourceError as e:  # e.g. a question_id repeated within one file
            b.quarantine(q.file, f"line {q.line} (question {q.question_id})", e)
    return b.build({
        "source": "pope", "files": [str(f) for f in files], "images": str(b.root),
        "test_fraction": test_fraction, "seed": seed, "questions": len(parsed),
    })
