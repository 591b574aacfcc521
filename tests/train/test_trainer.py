"""Training from a store with a planted nonlinear map: it learns, it is reproducible, it commits."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from l2s_data.behaviors import TargetScaling, TrainerSettings
from l2s_data.errors import ConfigError, EmptySelectionError, KeyNotFoundError
from l2s_data.steer import load_predictor
from l2s_data.store import Store
from l2s_data.train import fit, load_data, parse_train_config, train
from l2s_data.train.data import label_weights, target_scales
from l2s_data.train.trainer import init_decoder, loss_terms, lr_factor


@pytest.fixture
def cfg_of(planted, planted_mod, tmp_path):
    def make(**over):
        return parse_train_config(planted_mod.train_config(planted.url, tmp_path / "runs", **over))
    return make


def test_the_predictor_recovers_a_planted_nonlinear_map_on_held_out_rows(planted, cfg_of):
    # 40 epochs reach a held-out cosine of 0.970 (60: 0.974; 20: 0.966), well above 0.95
    res = train(cfg_of(split={"val_where": "split = 'test'", "validate_on_test": True}, trainer={"epochs": 40}))
    assert res.metrics["val_rows"] == len(planted.rows("test"))
    assert res.metrics["val_cosine"] > 0.95
    assert res.metrics["val_cosine"] > res.metrics["mean_s_cosine"] and res.metrics["gain_cosine"] > 0
    # the saved predictor gives the same held-out cosine, computed here with numpy
    model, meta = load_predictor(res.artifact, d_in=16, d_out=12)
    test = planted.rows("test")
    with torch.no_grad():
        pred = model(torch.from_numpy(planted.x[1][test])).numpy().astype(np.float64)
    y = planted.y[1][test].astype(np.float64)
    cos = (pred * y).sum(1) / np.linalg.norm(pred, axis=1) / np.linalg.norm(y, axis=1)
    assert cos.mean() == pytest.approx(res.metrics["val_cosine"], abs=1e-5)
    assert (meta.input_layer, meta.steer_layer) == (1, 1)
    assert meta.snapshot_id == Store.open(planted.url).snapshot().id
    assert meta.config["trainer"]["hidden_size"] == 64


def test_the_same_config_and_snapshot_train_to_bit_identical_weights(cfg_of):
    cfg = cfg_of(trainer={"epochs": 8, "decoder_init": "truncated_svd"})
    a, b = train(cfg, save=False), train(cfg, save=False)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert a.meta.snapshot_id == b.meta.snapshot_id
    c = train(cfg.model_copy(update={"seed": 1}), save=False)
    assert not torch.equal(a.model.encoder.weight, c.model.encoder.weight)


def test_a_selection_that_fits_in_memory_is_read_once(planted, cfg_of, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(planted.url, copy)
    cfg = cfg_of(store=str(copy), trainer={"epochs": 5})
    data = load_data(cfg, Store.open(copy))
    assert data.train is not None and data.num_train + len(data.val) == len(planted.rows("train"))
    shutil.rmtree(copy / "shards")  # every epoch now has only what was read before
    model, history = fit(cfg, data)
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4]


def test_a_streamed_training_reads_the_store_every_epoch_and_also_learns(cfg_of):
    # 25 epochs, each read from the store, reach a cosine of 0.961 (40: 0.964; 15: 0.943)
    res = train(cfg_of(in_memory=False, trainer={"epochs": 25}), save=False)
    assert res.metrics["val_cosine"] > 0.9


def test_streamed_and_in_memory_rows_give_the_same_target_scales_and_label_weights(planted, cfg_of):
    scaling = {"method": "group_mean_norm", "reference_group": "harmful",
               "groups": {"harmful": ["01-Illegal_Activitiy"], "expert": ["10-Legal_Opinion"],
                          "health": ["12-Health_Consultation"]}}
    store = Store.open(planted.url)
    mem = load_data(cfg_of(target_scaling=scaling, trainer={"balance_labels": True}), store)
    streamed = load_data(cfg_of(target_scaling=scaling, trainer={"balance_labels": True}, in_memory=False), store)
    assert mem.train is not None and streamed.train is None and streamed.num_train == mem.num_train
    assert mem.scales.keys() == streamed.scales.keys() == {"01-Illegal_Activitiy", "10-Legal_Opinion", "12-Health_Consultation"}
    for c in mem.scales:
        assert streamed.scales[c] == pytest.approx(mem.scales[c], rel=1e-6)
    assert mem.scales["01-Illegal_Activitiy"] == 1.0
    assert streamed.weights == pytest.approx(mem.weights)
    model, history = fit(cfg_of(trainer={"epochs": 2, "balance_labels": True}, target_scaling=scaling), streamed)
    assert len(history) == 2 and np.isfinite(history[-1]["val_loss"])


def test_every_run_lands_in_the_runs_table_ranked_by_val_cosine(planted, cfg_of):
    store = Store.open(planted.url)
    good = train(cfg_of(trainer={"epochs": 20}))
    weak = train(cfg_of(trainer={"epochs": 1, "lr": 1e-5}))
    t = store.sql(f"SELECT run_id, kind, snapshot_id, status, val_cosine, metrics_json, artifact FROM runs "
                  f"WHERE run_id IN ('{good.run_id}', '{weak.run_id}') ORDER BY val_cosine DESC")
    assert t["run_id"].to_pylist() == [good.run_id, weak.run_id]
    assert set(t["snapshot_id"].to_pylist()) == {store.snapshot().id}
    assert t["status"].to_pylist() == ["completed", "completed"]
    hist = json.loads(t["metrics_json"][0].as_py())["history"]
    assert len(hist) == 20 and {"train_loss", "val_loss", "val_cosine", "lr"} <= set(hist[0])
    assert t["artifact"][0].as_py().endswith("predictor.safetensors")


def test_the_last_epochs_val_metrics_are_the_offline_ones_even_with_weighted_loss(planted, cfg_of):
    # Balanced labels weight the loss per row; val_mse / val_cosine per epoch still mean what
    # the run's offline metrics (and its runs row) mean, so a sweep ranks trials by one figure.
    res = train(cfg_of(trainer={"epochs": 3, "balance_labels": True}), save=False)
    last = res.history[-1]
    assert last["val_cosine"] == pytest.approx(res.metrics["val_cosine"], rel=1e-5)
    assert last["val_mse"] == pytest.approx(res.metrics["val_mse"], rel=1e-5)


def test_loss_terms_match_their_definition():
    s = TrainerSettings(mse_weight=1.0, l1_weight=0.5, cos_weight=0.2, cos_ramp_epochs=10)
    pred, y = torch.randn(6, 5), torch.randn(6, 5)
    w = torch.tensor([1.0, 2.0, 1.0, 1.0, 0.5, 1.0])
    loss, parts = loss_terms(pred, y, w, s, epoch=5)
    d = (pred - y).numpy().astype(np.float64)
    cos = (pred * y).sum(1).numpy() / (pred.norm(dim=1) * y.norm(dim=1)).numpy()
    per = (d ** 2).mean(1) + 0.5 * np.abs(d).mean(1) - 0.2 * 0.5 * cos   # ramp: 5 / 10 of the weight
    want = (per * w.numpy()).sum() / w.numpy().sum()
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert parts["cos"] == pytest.approx((cos * w.numpy()).sum() / w.numpy().sum(), rel=1e-5)


def test_the_schedule_warms_up_linearly_then_follows_a_cosine_to_zero():
    s = TrainerSettings(lr=1.0, schedule="cosine", warmup_epochs=2, epochs=10)
    f = [lr_factor(step, 4, s) for step in range(40)]
    assert f[0] == pytest.approx(1 / 8) and f[7] == pytest.approx(1.0)
    assert f[8] == pytest.approx(1.0) and f[8 + 16] == pytest.approx(0.5)
    assert f[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 31 / 32)))
    assert all(lr_factor(k, 4, TrainerSettings(schedule="constant")) == 1.0 for k in range(40))


def test_svd_initialisation_puts_the_targets_principal_directions_in_the_decoder():
    from l2s_data.steer import Predictor

    rng = np.random.default_rng(0)
    y = rng.standard_normal((200, 6)) @ np.diag([5, 3, 1, 0.5, 0.2, 0.1]) + 2.0
    g = Predictor(4, 6, 3)
    init_decoder(g, y, "truncated_svd", seed=0)
    _, s, vt = np.linalg.svd(y - y.mean(0), full_matrices=False)
    cols = g.decoder.weight.detach().numpy()
    for j in range(3):
        assert abs(abs(np.dot(cols[:, j], vt[j])) - 1.0) < 1e-4   # unit components, as TruncatedSVD's
    d = Predictor(4, 6, 8)
    init_decoder(d, y, "dictionary_learning", seed=0)
    assert np.isfinite(d.decoder.weight.detach().numpy()).all()


def test_group_target_scaling_gives_every_group_the_reference_groups_mean_norm():
    rng = np.random.default_rng(0)
    cats = np.array(["a1", "a2", "b", "c"] * 50)
    y = rng.standard_normal((200, 4)) * np.array([1.0, 1.0, 3.0, 0.2])[[["a1", "a2", "b", "c"].index(c) for c in cats]][:, None]
    spec = TargetScaling(method="group_mean_norm", reference_group="a", groups={"a": ["a1", "a2"], "b": ["b"], "c": ["c"]})
    f = target_scales(spec, cats, y)
    scaled = y * np.array([f[c] for c in cats])[:, None]
    norms = np.linalg.norm(scaled, axis=1)
    ref = np.linalg.norm(y, axis=1)[np.isin(cats, ["a1", "a2"])].mean()
    for g in (["a1", "a2"], ["b"], ["c"]):
        assert norms[np.isin(cats, g)].mean() == pytest.approx(ref)
    assert f["a1"] == f["a2"] == pytest.approx(1.0)


def test_balanced_labels_weigh_each_label_the_same_in_total(planted):
    labels = planted.label[planted.rows("train")]
    w = label_weights(labels)
    total = {lab: w[lab] * int((labels == lab).sum()) for lab in w}
    assert total["yes"] == pytest.approx(total["no"])
    assert w["yes"] > w["no"]  # yes is the rarer label here


def test_a_reference_preset_sets_the_trainer_and_layers_and_the_file_wins(planted, tmp_path):
    base = {"store": str(planted.url), "preset": "reference-llava", "task": "safety",
            "input": {"recipe": "plant-input"}, "target": {"recipe": "plant-pair"}}
    cfg = parse_train_config(base)
    assert (cfg.input.layer, cfg.target.layer) == (30, 15)
    assert (cfg.input.position, cfg.target.position) == ("user_last", "sequence_last")
    t = cfg.trainer
    assert (t.l1_weight, t.cos_weight, t.decoder_init, t.lr, t.hidden_size) == (1.0, 0.1, "dictionary_learning", 1e-4, 100)
    assert cfg.target_scaling.method == "group_mean_norm"
    pope = parse_train_config({**base, "task": "pope", "trainer": {"epochs": 3}})
    assert (pope.trainer.schedule, pope.trainer.warmup_epochs, pope.trainer.select) == ("cosine", 50, "best_validation")
    assert pope.trainer.cos_ramp_epochs == 100 and pope.trainer.balance_labels and pope.trainer.epochs == 3


def test_an_unknown_config_key_is_named(planted, planted_mod, tmp_path):
    raw = planted_mod.train_config(planted.url, tmp_path)
    raw["trainer"]["learning_rate"] = 0.1
    raw["epochz"] = 3
    with pytest.raises(ConfigError) as e:
        parse_train_config(raw, source="bad.toml")
    assert "unknown key 'trainer.learning_rate'" in str(e.value) and "unknown key 'epochz'" in str(e.value)
    with pytest.raises(ConfigError, match="preset = 'nope'"):
        parse_train_config({**planted_mod.train_config(planted.url, tmp_path), "preset": "nope"})


def test_a_where_that_selects_nothing_is_named(cfg_of):
    with pytest.raises(EmptySelectionError, match=r"training selection \(split.train_where\) where = \"split = 'nope'\" selects no sample"):
        train(cfg_of(split={"train_where": "split = 'nope'"}))
    with pytest.raises(EmptySelectionError, match=r"validation selection \(split.val_where\) where = \"category = .none.\" selects no"):
        train(cfg_of(split={"val_where": "category = 'none'"}))


def test_a_recipe_that_lacks_the_requested_layer_is_named(cfg_of):
    with pytest.raises(KeyNotFoundError, match=r"recipe 'plant-input' has no layer 5 .* stored layers are \[0, 1\]"):
        train(cfg_of(input={"recipe": "plant-input", "position": "prompt_last", "layer": 5}))
