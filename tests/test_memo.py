"""The bounded memo behind parsed SQL, rendered prompts and read table parts."""

from __future__ import annotations

import pytest

from l2s_data.memo import Memo


def test_a_value_is_made_once_and_the_least_recently_used_goes_first():
    made = []
    m = Memo(2)

    def get(k):
        return m.get(k, lambda: made.append(k) or k * 10)

    assert [get(1), get(2), get(1), get(3)] == [10, 20, 10, 30]  # 3 pushes out 2, used longest ago
    assert made == [1, 2, 3] and 1 in m and 3 in m and 2 not in m and len(m) == 2


def test_weights_bound_the_total_and_a_heavy_value_is_returned_but_not_kept():
    m = Memo(max_weight=80, weight=len)
    assert m.get("a", lambda: "x" * 10) == "x" * 10
    assert m.get("b", lambda: "y" * 10) == "y" * 10
    assert m.get("big", lambda: "z" * 11) == "z" * 11  # over 80 / 8
    assert "big" not in m and "a" in m and "b" in m
    for k in "cdefgh":
        m.get(k, lambda: "w" * 10)
    assert "a" in m and len(m) == 8  # 8 x 10 = 80: all fit
    m.get("i", lambda: "v" * 10)
    assert "a" not in m and "b" in m and len(m) == 8  # 90 > 80: the oldest goes


def test_an_error_is_raised_and_nothing_is_kept():
    m = Memo(4)

    def fail():
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        m.get("k", fail)
    assert "k" not in m and m.get("k", lambda: 1) == 1


def test_a_memo_needs_a_bound():
    with pytest.raises(ValueError):
        Memo()
    with pytest.raises(ValueError):
        Memo(max_weight=10)
