"""Splits by group: whole groups on one side, an exact share in test, independent of order."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l2s_data.datasets.builder import split_groups
from l2s_data.errors import DataSourceError


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=6), max_size=60), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_every_group_gets_one_split_and_the_test_share_is_exact(groups, fraction, seed):
    got = split_groups(groups, test_fraction=fraction, seed=seed)
    assert set(got) == set(groups)
    assert set(got.values()) <= {"train", "test"}
    assert sum(v == "test" for v in got.values()) == int(round(fraction * len(set(groups))))
    shuffled = list(groups)
    random.Random(seed).shuffle(shuffled)
    assert split_groups(shuffled + shuffled, test_fraction=fraction, seed=seed) == got


def test_a_bad_fraction_is_refused():
    with pytest.raises(DataSourceError, match="test_fraction must be in"):
        split_groups(["a"], test_fraction=1.5, seed=0)
