"""synthetic-safety: deterministic, covers the 13 scenarios, splits by image."""

from __future__ import annotations

import hashlib

from l2s_data.behaviors import load_behavior
from l2s_data.datasets import MMSB_SCENARIOS, make_synthetic, read_dataset


def _digest(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((d / "images").iterdir())}


def test_same_seed_gives_the_same_bytes_and_ids(tmp_path):
    a = make_synthetic("synthetic-safety", tmp_path / "a", n=30, seed=7)
    b = make_synthetic("synthetic-safety", tmp_path / "b", n=30, seed=7)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert a.samples.equals(b.samples) and a.memberships.equals(b.memberships)
    c = make_synthetic("synthetic-safety", tmp_path / "c", n=30, seed=8)
    assert set(c.sample_ids).isdisjoint(a.sample_ids)


def test_growing_n_keeps_the_first_items(tmp_path):
    small = make_synthetic("synthetic-safety", tmp_path / "s", n=13, seed=0)
    big = make_synthetic("synthetic-safety", tmp_path / "b", n=40, seed=0)
    assert set(small.sample_ids) <= set(big.sample_ids)


def test_every_scenario_has_its_label_and_a_behavior_pair(tmp_path):
    t = make_synthetic("synthetic-safety", tmp_path, n=39, seed=0)
    m = t.memberships.to_pylist()
    assert {r["category"] for r in m} == set(MMSB_SCENARIOS)
    for r in m:
        assert r["label"] == ("defer" if r["category"][:2] in ("10", "11", "12") else "refuse")
        assert r["dataset"] == "synthetic-safety"
        load_behavior("safety-llava").pair_for(r["category"], r["label"])
    assert len(t) == 39 and {r["split"] for r in m} == {"train", "test"}
    back = read_dataset(tmp_path)
    assert back.samples.equals(t.samples)
    assert all(q.strip() for q in t.samples.column("query").to_pylist())
    sizes = set(zip(t.samples.column("width").to_pylist(), t.samples.column("height").to_pylist()))
    assert sizes == {(192, 192)}
