"""The validation rule is written once: training's hash share and evaluation's validation part
are the same salted hash, each with the salt it has always had (so stored results keep their parts)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import l2s_data.evaluate.run as run
import l2s_data.train.data as data
from l2s_data.datasets.splits import EVAL_SALT, TRAIN_SALT, hash_share, is_validation


def _share(prefix: str, sample_id: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(f"{prefix}:{sample_id}".encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def test_training_and_evaluation_draw_their_validation_rows_with_the_salts_they_always_had():
    ids = [f"s{i}" for i in range(400)]
    assert [hash_share(s, 0.3) for s in ids] == [_share("train-validation", s, 0.3) for s in ids]
    assert [is_validation(s, 0.3) for s in ids] == [_share("validation", s, 0.3) for s in ids]
    assert (TRAIN_SALT, EVAL_SALT) == ("train-validation", "validation")


def test_the_two_salts_draw_different_rows_and_each_share_is_about_its_fraction():
    ids = [f"s{i}" for i in range(2000)]
    train = [hash_share(s, 0.5) for s in ids]
    ev = [is_validation(s, 0.5) for s in ids]
    assert train != ev
    assert 0.45 < sum(train) / len(ids) < 0.55 and 0.45 < sum(ev) / len(ids) < 0.55
    assert not hash_share("s1", 0.0) and hash_share("s1", 1.0)


def test_the_evaluation_runner_does_not_define_its_own_rule():
    assert "def is_validation" not in Path(run.__file__).read_text()
    assert "def hash_share" not in Path(data.__file__).read_text()
