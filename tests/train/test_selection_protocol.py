"""No selection sees a test row; the best epoch is chosen by a fixed criterion; each category's
target is read at its own position; the reference's decoder scales and POPE batch balance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from l2s_data.behaviors import TrainerSettings, list_presets, load_preset
from l2s_data.errors import ConfigError
from l2s_data.schemas import MEMBERSHIPS, SAMPLES
from l2s_data.store import Store
from l2s_data.train import fit, load_data, load_train_config, parse_train_config, train
from l2s_data.train.config import SplitSpec
from l2s_data.train.trainer import init_decoder

SHIPPED = Path(__file__).resolve().parents[2] / "l2s_data" / "train" / "configs"


@pytest.fixture
def cfg_of(planted, planted_mod, tmp_path):
    def make(**over):
        return parse_train_config(planted_mod.train_config(planted.url, tmp_path / "runs", **over))
    return make


def _test_ids(planted) -> set[str]:
    return {planted.ids[i] for i in planted.rows("test")}


def test_the_default_split_validates_on_a_hash_share_of_the_training_rows_never_on_test(planted, cfg_of):
    assert SplitSpec().val_where == "" and SplitSpec().val_rule == "hash_share"
    data = load_data(cfg_of(), Store.open(planted.url))
    train_ids = {planted.ids[i] for i in planted.rows("train")}
    assert set(data.val.ids) <= train_ids and not set(data.val.ids) & _test_ids(planted)
    assert not set(data.val.ids) & set(data.train.ids)
    assert 0.1 < len(data.val) / len(train_ids) < 0.3
    # the same rows whatever the seed: a hash of the sample id, not a draw
    again = load_data(cfg_of(seed=7), Store.open(planted.url))
    assert again.val.ids == data.val.ids


@pytest.mark.parametrize("preset", list_presets())
@pytest.mark.parametrize("task", ["safety", "pope"])
def test_every_shipped_presets_validation_rows_are_disjoint_from_test(planted, task, preset):
    cfg = parse_train_config({
        "store": str(planted.url), "preset": preset, "task": task,
        "input": {"recipe": "plant-input", "position": "prompt_last", "layer": 1},
        "target": {"recipe": "plant-pair", "position": "completion_last", "layer": 1, "position_overrides": {}},
    })
    assert cfg.split.val_where == ""
    data = load_data(cfg, Store.open(planted.url))
    assert not set(data.val.ids) & _test_ids(planted)
    assert data.val_overlaps_test == 0


def test_the_reference_pope_presets_validate_on_the_last_twelfth_of_the_training_rows(planted):
    for name in ("reference-llava", "reference-qwen"):
        assert load_preset(name).pope.split.validation == "last_share"
    cfg = parse_train_config({
        "store": str(planted.url), "preset": "reference-llava", "task": "pope",
        "input": {"recipe": "plant-input", "position": "prompt_last", "layer": 1},
        "target": {"recipe": "plant-pair", "position": "completion_last", "layer": 1},
    })
    data = load_data(cfg, Store.open(planted.url))
    train_ids = sorted(planted.ids[i] for i in planted.rows("train"))   # question ids are the sample ids here
    n_val = round(len(train_ids) / 12)
    assert data.val.ids == train_ids[-n_val:]


def test_the_shipped_training_configs_validate_on_training_rows():
    cfg = load_train_config(SHIPPED / "tiny-llava.toml")
    assert cfg.split.val_where == "" and "test" in cfg.split.test_where and not cfg.split.validate_on_test


def test_a_validation_selection_on_test_rows_is_refused_unless_the_config_says_so(planted, cfg_of, tmp_path):
    with pytest.raises(ConfigError, match=r"validation sample\(s\) are test rows .*validate_on_test = true"):
        load_data(cfg_of(split={"val_where": "split = 'test'"}), Store.open(planted.url))
    res = train(cfg_of(split={"val_where": "split = 'test'", "validate_on_test": True}, trainer={"epochs": 2}))
    assert res.metrics["validation_overlaps_test"] == len(planted.rows("test"))
    row = Store.open(planted.url).sql(f"SELECT metrics_json, config_json FROM runs WHERE run_id = '{res.run_id}'")
    assert json.loads(row["metrics_json"][0].as_py())["final"]["validation_overlaps_test"] > 0
    assert json.loads(row["config_json"][0].as_py())["split"]["validate_on_test"] is True
    from l2s_data.train.report import report_train

    # the report's text is what is checked here (tests/train/test_from_extraction.py checks its plots)
    text = report_train(Store.open(planted.url), res.run_id, tmp_path / "report", plots=False).read_text()
    assert f"{len(planted.rows('test'))} of them are test rows" in text
    assert not list((tmp_path / "report").glob("*.png")) and "(written without plots)" in text


def test_the_selection_criterion_is_constant_across_epochs_for_identical_predictions(planted, cfg_of):
    # lr so small that no weight moves: every epoch predicts the same. With the training loss's
    # cosine ramp (0.1 * epoch / 100) as the criterion, epoch 9 would look best.
    cfg = cfg_of(trainer={"epochs": 10, "lr": 1e-30, "schedule": "constant", "warmup_epochs": 0,
                          "cos_weight": 0.1, "cos_ramp_epochs": 100, "l1_weight": 1.0,
                          "criterion_cos_weight": 0.05, "select": "best_validation"})
    from l2s_data.train.trainer import criterion

    data = load_data(cfg, Store.open(planted.url))
    _, hist = fit(cfg, data)
    assert len({h["val_loss"] for h in hist}) == 1
    assert [h["kept"] for h in hist] == [True] + [False] * 9
    s = cfg.trainer
    pred, y = torch.randn(5, 4), torch.randn(5, 4)
    d = (pred - y).double()
    cos = torch.nn.functional.cosine_similarity(pred, y, dim=1).double()
    want = float(((d ** 2).mean(1) + d.abs().mean(1) - 0.05 * cos).mean())
    assert criterion(pred, y, s) == pytest.approx(want, rel=1e-5)


def test_the_reference_presets_select_by_mse_plus_l1_minus_a_twentieth_cosine():
    for name in ("reference-llava", "reference-qwen"):
        t = load_preset(name).pope.trainer
        assert (t.mse_weight, t.l1_weight, t.criterion_cos_weight) == (1.0, 1.0, 0.05)


def test_a_balanced_batch_loss_is_the_mean_of_its_per_label_means():
    from l2s_data.train.trainer import batch_weights

    codes = torch.tensor([0, 0, 0, 1])
    per = torch.tensor([1.0, 2.0, 3.0, 10.0])
    w = batch_weights(codes)
    assert float((per * w).sum() / w.sum()) == pytest.approx((2.0 + 10.0) / 2)


def test_decoder_initialisations_have_unit_norm_columns_as_the_reference():
    from l2s_data.steer import Predictor

    rng = np.random.default_rng(0)
    y = rng.standard_normal((300, 6)) * 40.0 + 3.0
    for method in ("truncated_svd", "dictionary_learning"):
        g = Predictor(4, 6, 3)
        init_decoder(g, y, method, seed=0)
        norms = np.linalg.norm(g.decoder.weight.detach().numpy(), axis=0)
        assert norms == pytest.approx(np.ones(3), abs=1e-5), method


def _two_position_store(root: Path) -> tuple[Path, dict[str, np.ndarray], list[str], list[str]]:
    """p2s at sequence_last and sequence_last-1 with different values, over 01 and 10-13."""
    rng = np.random.default_rng(1)
    cats = ["01-Illegal_Activitiy", "10-Legal_Opinion", "11-Financial_Advice", "12-Health_Consultation",
            "13-Gov_Decision"]
    n = 60
    ids = [f"q{i:03d}" for i in range(n)]
    cat = [cats[i % len(cats)] for i in range(n)]
    store = Store.open(root, create=True)
    rin = store.put_recipe({"two": "input"}, name="two-input")
    rpair = store.put_recipe({"two": "pair"}, name="two-pair")
    x = rng.standard_normal((n, 8)).astype(np.float32)
    ys = {"sequence_last": rng.standard_normal((n, 8)).astype(np.float32),
          "sequence_last-1": (rng.standard_normal((n, 8)) + 50.0).astype(np.float32)}
    with store.shard_writer("in-0", rin, ids) as w:
        w.write("input", "user_last", 14, x, "float32")
    with store.shard_writer("pair-0", rpair, ids) as w:
        for pos, y in ys.items():
            w.write("p2s", pos, 14, y, "float32")
    samples = pa.Table.from_pylist([{"sample_id": i, "query": f"q {i}", "image_path": f"{i}.png",
                                     "image_sha256": "0" * 64, "width": 8, "height": 8} for i in ids], schema=SAMPLES)
    mem = pa.Table.from_pylist([{"dataset": "mmsb", "subset": "all", "question_id": i, "sample_id": i,
                                 "category": cat[k], "label": "refuse", "split": "train" if k % 5 else "test"}
                                for k, i in enumerate(ids)], schema=MEMBERSHIPS)
    store.put("samples", samples, memberships=mem)
    return root, ys, ids, cat


def test_reference_qwen_safety_reads_categories_10_to_13_at_sequence_last_minus_one(tmp_path):
    root, ys, ids, cat = _two_position_store(tmp_path / "store")
    cfg = parse_train_config({"store": str(root), "preset": "reference-qwen", "task": "safety",
                              "input": {"recipe": "two-input"}, "target": {"recipe": "two-pair"},
                              "target_scaling": {"method": "none"}})
    assert cfg.target.position == "sequence_last"
    assert set(cfg.target.position_overrides) == {"10-Legal_Opinion", "11-Financial_Advice",
                                                  "12-Health_Consultation", "13-Gov_Decision"}
    data = load_data(cfg, Store.open(root))
    index = {s: k for k, s in enumerate(ids)}
    for sel in (data.train, data.val):
        for s, row in zip(sel.ids, sel.columns[1]):
            pos = "sequence_last" if cat[index[s]].startswith("01") else "sequence_last-1"
            np.testing.assert_array_equal(row, ys[pos][index[s]])
    assert len(data.train) + len(data.val) == sum(1 for k in range(len(ids)) if k % 5)
