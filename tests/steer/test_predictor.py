"""The predictor file: weights and metadata round-trip, and a predictor that does not fit is refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from l2s_data.errors import PredictorMismatchError
from l2s_data.steer import FILE_FORMAT, Predictor, PredictorMeta, load_predictor, save_predictor


def _meta(d_in=16, d_out=12, hidden=8, **kw):
    return PredictorMeta(
        input_key={"recipe": "rin", "view": "input", "position": "prompt_last", "layer": 30},
        target_key={"recipe": "rpair", "view": "p2s", "position": "completion_last", "layer": 15},
        d_in=d_in, d_out=d_out, hidden=hidden, snapshot_id="snap", run_id="r1",
        config={"trainer": {"lr": 1e-4}}, target_scales={"10-Legal_Opinion": 1.5}, **kw)


def test_the_predictor_is_linear_tanh_linear_without_a_decoder_bias():
    g = Predictor(16, 12, 8)
    x = torch.randn(5, 16)
    want = torch.tanh(x @ g.encoder.weight.T + g.encoder.bias) @ g.decoder.weight.T
    assert g.decoder.bias is None
    assert torch.allclose(g(x), want)
    assert g(x).shape == (5, 12)


def test_save_and_load_round_trip_the_weights_and_every_metadata_field(tmp_path):
    g = Predictor(16, 12, 8)
    path = save_predictor(tmp_path / "p.safetensors", g, _meta())
    h, meta = load_predictor(path, d_in=16, d_out=12, input_key={"recipe": "rin", "layer": 30},
                             target_key={"recipe": "rpair", "layer": 15})
    for k, v in g.state_dict().items():
        assert torch.equal(h.state_dict()[k], v)
    assert meta == _meta()
    assert (meta.input_layer, meta.steer_layer) == (30, 15)
    assert meta.recipe_ids == ["rin", "rpair"]


def test_loading_refuses_a_predictor_whose_dims_do_not_fit(tmp_path):
    path = save_predictor(tmp_path / "p.safetensors", Predictor(16, 12, 8), _meta())
    with pytest.raises(PredictorMismatchError, match=r"d_out = 12 .* but 4096 was asked for"):
        load_predictor(path, d_out=4096)
    with pytest.raises(PredictorMismatchError, match=r"d_in = 16"):
        load_predictor(path, d_in=32)


def test_loading_refuses_another_recipe_or_layer(tmp_path):
    path = save_predictor(tmp_path / "p.safetensors", Predictor(16, 12, 8), _meta())
    with pytest.raises(PredictorMismatchError, match=r"input recipe = 'rin', but 'other' was asked"):
        load_predictor(path, input_key={"recipe": "other"})
    with pytest.raises(PredictorMismatchError, match=r"target layer = 15, but 14 was asked"):
        load_predictor(path, target_key={"layer": 14})


def test_saving_refuses_metadata_that_disagrees_with_the_model(tmp_path):
    with pytest.raises(PredictorMismatchError, match="differ from its metadata"):
        save_predictor(tmp_path / "p.safetensors", Predictor(16, 12, 4), _meta(hidden=8))


def test_a_file_whose_tensors_disagree_with_its_metadata_is_refused(tmp_path):
    meta = json.dumps(_meta().to_dict())
    tensors = {"encoder.weight": torch.zeros(8, 16), "encoder.bias": torch.zeros(8),
               "decoder.weight": torch.zeros(13, 8)}
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"l2s.format": FILE_FORMAT, "l2s.predictor": meta})
    with pytest.raises(PredictorMismatchError, match="do not match the dims in its metadata"):
        load_predictor(tmp_path / "bad.safetensors")


def test_a_safetensors_file_that_is_not_a_predictor_is_refused(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(PredictorMismatchError, match="is not an l2s-data predictor"):
        load_predictor(tmp_path / "other.safetensors")
    with pytest.raises(PredictorMismatchError, match="no predictor file"):
        load_predictor(tmp_path / "missing.safetensors")
