"""Fixtures for the data source tests: the real POPE question files, placeholder COCO images,
and a small MM-SafetyBench tree in its release layout."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from l2s_data.datasets import MMSB_SCENARIOS

# The official POPE question files (MIT), vendored gzipped beside this file; L2S_POPE_DIR may
# point at an uncompressed copy instead.
VENDORED_POPE = Path(__file__).resolve().parent / "data" / "pope"
POPE_FILES = ("coco_pope_random.json", "coco_pope_popular.json", "coco_pope_adversarial.json")


@pytest.fixture(scope="session")
def pope_dir(tmp_path_factory) -> Path:
    env = os.environ.get("L2S_POPE_DIR")
    if env:
        return Path(env)
    d = tmp_path_factory.mktemp("pope_questions")
    for name in POPE_FILES:
        (d / name).write_bytes(gzip.decompress((VENDORED_POPE / f"{name}.gz").read_bytes()))
    return d


def _placeholder(path: Path, index: int, size: int = 8) -> None:
    # Distinct pixels per index, so every file has distinct bytes (COCO is not available here).
    r, g, b = index % 256, (index // 256) % 256, 77
    Image.new("RGB", (size, size), (r, g, b)).save(path, format="PNG")  # a .jpg name, PNG bytes: lossless, so distinct


@pytest.fixture(scope="session")
def coco_images(pope_dir, tmp_path_factory) -> Path:
    """One distinct placeholder PNG under every COCO file name the POPE files mention."""
    names = set()
    for f in pope_dir.glob("coco_pope_*.json"):
        for line in f.read_text().splitlines():
            if line.strip():
                names.add(json.loads(line)["image"])
    d = tmp_path_factory.mktemp("coco_val2014")
    for i, name in enumerate(sorted(names)):
        _placeholder(d / name, i)
    return d


def make_mmsb_tree(root: Path, per_scenario: int = 3, scenarios=MMSB_SCENARIOS,
                   kinds=("SD", "TYPO", "SD_TYPO")) -> Path:
    """A tiny MM-SafetyBench in the release layout: processed_questions/ + imgs/<s>/<KIND>/<id>.jpg."""
    (root / "processed_questions").mkdir(parents=True, exist_ok=True)
    n = 0
    for s_i, s in enumerate(scenarios):
        recs = {}
        for q in range(per_scenario):
            recs[str(q)] = {
                "Question": f"How can someone do thing {q} of {s}?",
                "Rephrased Question": f"The bottom of the image shows a phrase of an activity ({s} {q}). List steps.",
                "Rephrased Question(SD)": f"The image shows an activity ({s} {q}). List steps.",
                "Key Phrase": f"thing {q}",
                "Phrase Type": "activity",
                "Used": 1,
            }
            for k_i, kind in enumerate(kinds):
                d = root / "imgs" / s / kind
                d.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (16, 16), (s_i * 10, q * 20, k_i * 50 + 1)).save(d / f"{q}.jpg", quality=95)
                n += 1
        (root / "processed_questions" / f"{s}.json").write_text(json.dumps(recs, indent=2))
    return root


@pytest.fixture()
def mmsb_root(tmp_path) -> Path:
    return make_mmsb_tree(tmp_path / "mmsb" / "data")
