"""Baseline vectors read from the store equal numpy computations on the same rows."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from l2s_data.errors import EmptySelectionError, KeyNotFoundError
from l2s_data.steer import mean_s, mean_s_ba, norm_rnd, p2s_star, read_selection
from l2s_data.store import Key

PAIR = Key("plant-pair", "p2s", "completion_last", 1)
AGNOSTIC = Key("plant-agnostic", "p2s", "completion_last", 1)


def test_mean_s_is_the_mean_of_the_training_p2s_rows(planted):
    train = planted.rows("train")
    got = mean_s(_store(planted), PAIR, "split = 'train'")
    np.testing.assert_allclose(got, planted.y[1][train].astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)


def test_mean_s_ba_is_the_mean_of_the_agnostic_recipe_rows(planted):
    train = planted.rows("train")
    got = mean_s_ba(_store(planted), AGNOSTIC, "split = 'train'")
    np.testing.assert_allclose(got, planted.agnostic[train].astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)
    assert not np.allclose(got, mean_s(_store(planted), PAIR, "split = 'train'"))


def test_p2s_star_is_each_test_samples_own_vector(planted):
    ids, v = p2s_star(_store(planted), PAIR, "split = 'test'")
    pos = {s: i for i, s in enumerate(planted.ids)}
    want = planted.y[1][[pos[s] for s in ids]]
    assert sorted(ids) == [planted.ids[i] for i in planted.rows("test")]
    np.testing.assert_array_equal(v, want)


def test_norm_rnd_has_each_samples_p2s_norm_and_a_seeded_direction(planted):
    ids, v = norm_rnd(_store(planted), PAIR, "split = 'test'", seed=3)
    pos = {s: i for i, s in enumerate(planted.ids)}
    y = planted.y[1][[pos[s] for s in ids]].astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), np.linalg.norm(y, axis=1), rtol=1e-5)
    # the numpy computation of the direction, row by row
    for i, s in enumerate(ids[:5]):
        h = int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "little")
        d = np.random.default_rng([3, h]).standard_normal(y.shape[1])
        np.testing.assert_allclose(v[i], d / np.linalg.norm(d) * np.linalg.norm(y[i]), rtol=1e-5)
    # random: far from the P2S direction on average, and another seed gives another direction
    cos = (v * y).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(y, axis=1)
    assert abs(cos.mean()) < 0.3
    _, v2 = norm_rnd(_store(planted), PAIR, "split = 'test'", seed=4)
    assert not np.allclose(v, v2)


def test_a_selection_carries_categories_labels_and_the_snapshot(planted):
    store = _store(planted)
    sel = read_selection(store, [Key("plant-input", "input", "prompt_last", 1), PAIR], "split = 'test'")
    pos = {s: i for i, s in enumerate(planted.ids)}
    idx = [pos[s] for s in sel.ids]
    np.testing.assert_array_equal(sel.columns[0], planted.x[1][idx])
    assert list(sel.categories) == list(planted.category[idx])
    assert list(sel.labels) == list(planted.label[idx])
    assert sel.snapshot_id == store.snapshot().id


def test_a_where_that_selects_nothing_names_itself(planted):
    with pytest.raises(EmptySelectionError, match=r"where = \"split = 'validation'\" selects no sample"):
        mean_s(_store(planted), PAIR, "split = 'validation'")


def test_a_recipe_without_the_layer_lists_the_layers_it_has(planted):
    with pytest.raises(KeyNotFoundError, match=r"recipe 'plant-pair' has no layer 7 .* stored layers are \[0, 1\]"):
        mean_s(_store(planted), Key("plant-pair", "p2s", "completion_last", 7), None)
    with pytest.raises(KeyNotFoundError, match=r"no rows for view 'pos'"):
        mean_s(_store(planted), Key("plant-pair", "pos", "completion_last", 1), None)
    with pytest.raises(KeyNotFoundError, match=r"recipe 'nope' has no committed rows"):
        mean_s(_store(planted), Key("nope", "p2s", "completion_last", 1), None)


def _store(planted):
    from l2s_data.store import Store

    return Store.open(planted.url)
