"""Hooks accept decoder layers that return a Tensor (transformers 5.x) or a tuple (older)."""

from __future__ import annotations

import torch

from l2s_data.models.gather import Gather, layer_hooks, layer_output


class TupleLayer(torch.nn.Module):
    def forward(self, x):
        return (x * 2.0, "extra")


class TensorLayer(torch.nn.Module):
    def forward(self, x):
        return x * 2.0


def test_layer_output_takes_the_hidden_states_of_either_kind():
    h = torch.ones(2, 3, 4)
    assert layer_output(h) is h
    assert layer_output((h, None)) is h


def test_gather_reads_the_same_rows_from_tuple_and_tensor_layers():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    results = []
    for layer in (TupleLayer(), TensorLayer()):
        layers = torch.nn.ModuleList([layer])
        g = Gather({("last",): ([0], 2)}, hidden=4, device=torch.device("cpu"))
        g.set_pass({("last",): ([2, 5], [0, 1], [1.0, 1.0])})  # row 0 token 2, row 1 token 2
        with layer_hooks(layers, g.hooks()):
            layers[0](x)
        results.append(g.get(("last",), 0).clone())
    torch.testing.assert_close(results[0], results[1])
    torch.testing.assert_close(results[0], 2 * x[:, 2])


def test_steering_hook_keeps_a_tuple_output_a_tuple(tiny_adapter, monkeypatch):
    adapter = tiny_adapter("llava")
    fake = torch.nn.ModuleList([TupleLayer() for _ in range(adapter.num_layers)])
    monkeypatch.setattr(adapter, "layers", fake)
    x = torch.zeros(2, 3, adapter.hidden_size)
    v = torch.randn(2, adapter.hidden_size)
    with adapter.steering(1, v, alpha=0.5):
        out = fake[1](x)
    assert isinstance(out, tuple) and out[1] == "extra"
    torch.testing.assert_close(out[0], 0.5 * v[:, None, :].expand(2, 3, -1))
