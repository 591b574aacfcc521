"""shapes-POPE: deterministic scenes whose questions have the right answers."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict

import numpy as np
import pytest

from l2s_data.behaviors import load_behavior
from l2s_data.datasets import SYNTHETIC_NAMES, make_synthetic, read_dataset
from l2s_data.datasets.shapes_pope import _COLORS, OBJECTS, question_for
from l2s_data.errors import DataSourceError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    d = tmp_path_factory.mktemp("shapes")
    return d, make_synthetic("shapes-pope", d, n=60, seed=5)


def _digest(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((d / "images").iterdir())}


def test_same_seed_same_bytes_and_ids(shapes, tmp_path):
    d, t = shapes
    again = make_synthetic("shapes-pope", tmp_path, n=60, seed=5)
    assert _digest(d) == _digest(tmp_path)
    assert again.samples.equals(t.samples) and again.memberships.equals(t.memberships)
    other = make_synthetic("shapes-pope", tmp_path / "o", n=60, seed=6)
    assert _digest(tmp_path / "o") != _digest(d)


def test_three_balanced_subsets_with_shared_yes_questions(shapes):
    _, t = shapes
    m = t.memberships.to_pylist()
    c = Counter((r["subset"], r["label"]) for r in m)
    for s in ("random", "popular", "adversarial"):
        assert c[s, "yes"] == c[s, "no"] > 0
    yes = {s: {r["sample_id"] for r in m if r["subset"] == s and r["label"] == "yes"} for s in ("random", "popular", "adversarial")}
    assert yes["random"] == yes["popular"] == yes["adversarial"]
    assert len(t) < len(m)  # repeated yes questions are one sample each, as in POPE
    assert {r["category"] for r in m} == {"pope"}
    for r in t.records():
        load_behavior("pope-yes-no").pair_for(r["category"], r["label"])


def _has_color(im, obj):
    a = np.asarray(im).reshape(-1, 3).astype(int)
    return bool((np.abs(a - np.array(_COLORS[obj.split()[0]])).sum(axis=1) == 0).sum() > 20)


def test_answers_match_what_is_drawn(shapes):
    _, t = shapes
    by_image = defaultdict(list)
    for r in t.records():
        if r["subset"] == "random":
            by_image[r["image_path"]].append((next(o for o in OBJECTS if question_for(o) == r["query"]), r))
    checked_no = 0
    for qs in by_image.values():
        im = t.load_image(qs[0][1]["sample_id"])
        yes = [o for o, r in qs if r["label"] == "yes"]
        for o in yes:
            assert _has_color(im, o), (o, qs[0][1]["image_path"])  # a "yes" object is drawn
        if len(yes) < 3:  # every object of the scene is asked about: a "no" colour outside them is absent
            present_colors = {o.split()[0] for o in yes}
            for o, r in qs:
                if r["label"] == "no" and o.split()[0] not in present_colors:
                    assert not _has_color(im, o), (o, r["image_path"])
                    checked_no += 1
    assert checked_no > 10


def test_no_image_in_both_splits_and_negatives_follow_their_style(shapes):
    _, t = shapes
    by_image = defaultdict(set)
    sha = dict(zip(t.sample_ids, t.samples.column("image_sha256").to_pylist()))
    for r in t.memberships.to_pylist():
        by_image[sha[r["sample_id"]]].add(r["split"])
    assert all(len(v) == 1 for v in by_image.values())
    assert {s for v in by_image.values() for s in v} == {"train", "test"}
    m = t.records()
    neg = {s: Counter(r["query"] for r in m if r["subset"] == s and r["label"] == "no") for s in ("random", "popular", "adversarial")}
    # Popular negatives concentrate on few objects; random ones spread over many.
    assert len(neg["popular"]) < len(neg["random"])


def test_grammar_and_unknown_names():
    assert question_for("orange ring") == "Is there an orange ring in the image?"
    assert question_for("red circle") == "Is there a red circle in the image?"
    assert set(SYNTHETIC_NAMES) == {"shapes-pope", "synthetic-safety"}
    with pytest.raises(DataSourceError, match="unknown synthetic data set 'cats'"):
        make_synthetic("cats", "/tmp/never", n=1)
    with pytest.raises(DataSourceError, match="n must be a positive integer"):
        make_synthetic("shapes-pope", "/tmp/never", n=0)


def test_written_directory_reads_back(shapes):
    d, t = shapes
    back = read_dataset(d)
    assert back.samples.equals(t.samples) and back.info["source"] == "shapes-pope"
