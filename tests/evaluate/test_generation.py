"""Steered generation: alpha = 0 is the base model, the shift is exactly alpha * v at layer L*,
and L2S reads an unsteered h_X even when L' is deeper than L*."""

from __future__ import annotations

import doctest

import pytest
import torch

import l2s_data.evaluate.methods as methods_mod
from l2s_data.errors import ConfigError, KeyNotFoundError
from l2s_data.evaluate.generation import SteeredGenerator
from l2s_data.evaluate.sources import ActivationCache, VectorSources
from l2s_data.evaluate.methods import METHOD_NAMES, get_method, parse_alpha, parse_alphas
from l2s_data.models import ChatInput, ContrastiveItem
from l2s_data.store import Store

from .conftest import make_items

L_STAR, L_PRIME = 1, 3


class LinearPredictor:
    """A real (untrained) linear predictor that keeps every h it was given."""

    def __init__(self, dim: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(dim, dim, generator=g) / dim**0.5
        self.seen: list[torch.Tensor] = []

    def predict(self, h: torch.Tensor) -> torch.Tensor:
        self.seen.append(h.clone())
        return h @ self.weight


def _sources(adapter, **kw):
    mean = torch.randn(adapter.hidden_size)
    return VectorSources(steer_layer=L_STAR, input_layer=L_PRIME, mean_s=mean, mean_s_ba=-mean,
                         predictor=LinearPredictor(adapter.hidden_size), **kw)


def test_the_registry_has_the_seven_methods_and_refuses_unknown_names():
    assert METHOD_NAMES == ("none", "prompt-only", "mean-s", "mean-s-ba", "norm-rnd", "l2s", "p2s")
    assert get_method("Mean-S(BA)").name == "mean-s-ba" and get_method(" L2S ").name == "l2s"
    assert [get_method(n).steers for n in METHOD_NAMES] == [False, False, True, True, True, True, True]
    with pytest.raises(ConfigError, match=r"method 'mean-t' does not exist; expected one of none, prompt-only"):
        get_method("mean-t")


def test_alphas_must_be_numbers():
    assert parse_alphas(2.2) == (2.2,) and parse_alphas([1, "0.5", 1.0]) == (1.0, 0.5)
    with pytest.raises(ConfigError, match=r"alphas\[1\] = 'strong' is not a number"):
        parse_alphas([1.0, "strong"])
    with pytest.raises(ConfigError, match="alpha = True is not a number"):
        parse_alpha(True)
    with pytest.raises(ConfigError, match="not a finite number"):
        parse_alpha("nan")
    with pytest.raises(ConfigError, match="is empty"):
        parse_alphas([])


@pytest.mark.parametrize("method", ["mean-s", "mean-s-ba", "norm-rnd", "l2s", "p2s"])
def test_alpha_zero_gives_the_unsteered_output_token_for_token(llava, items, method):
    gen = SteeredGenerator(llava, _sources(llava), max_new_tokens=8)
    plain = gen.generate(get_method("none"), None, items)
    m = get_method(method)
    v = gen.vectors(m, items)
    assert v.shape == (len(items), llava.hidden_size) and v.abs().sum() > 0
    assert gen.generate(m, 0.0, items, vectors=v) == plain
    # Token for token: the generated ids too, not only their decoding.
    chats = gen.chat_inputs(m, items)
    inputs = llava.generation_inputs(chats)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=llava.pad_token_id)
    with torch.no_grad():
        base = llava.model.generate(**inputs, **kw)
        with llava.steering(L_STAR, v, 0.0):
            zero = llava.model.generate(**inputs, **kw)
        with llava.steering(L_STAR, v, 8.0):
            moved = llava.model(**inputs).logits[:, -1]
        unmoved = llava.model(**inputs).logits[:, -1]
    assert torch.equal(base, zero)
    assert (moved - unmoved).abs().max() > 1e-3


def test_a_steered_generation_shifts_layer_l_star_by_exactly_alpha_v_at_every_position(llava, items):
    gen = SteeredGenerator(llava, _sources(llava), max_new_tokens=5)
    m = get_method("p2s")
    v = gen.vectors(m, items)
    before, after = [], []
    # A hook registered before the steering hook sees layer L*'s own output; the next layer's
    # input is what the steered model carries on with.
    h1 = llava.layers[L_STAR].register_forward_hook(
        lambda _m, _a, out: before.append((out[0] if isinstance(out, tuple) else out).detach().clone()))
    h2 = llava.layers[L_STAR + 1].register_forward_pre_hook(lambda _m, args: after.append(args[0].detach().clone()))
    try:
        gen.generate(m, 2.5, items, vectors=v)
    finally:
        h1.remove()
        h2.remove()
    assert len(before) == len(after) == 5  # the prefill and one call per further token
    assert before[0].shape[1] > 1 and all(b.shape[1] == 1 for b in before[1:])  # KV cache in use
    for b, a in zip(before, after):
        want = (2.5 * v)[:, None, :].expand_as(b)
        torch.testing.assert_close(a - b, want, atol=1e-5, rtol=1e-5)


def _cache_store(tmp_path, adapter, items, *, layer, position="prompt_last"):
    """A real store holding the unsteered input view at ``layer`` of ``items``."""
    store = Store.open(tmp_path / "store", create=True)
    rid = store.put_recipe({"test": "input", "layer": layer}, name="eval-input")
    h = adapter.capture([ChatInput(it.image, it.query) for it in items], layers=[layer], positions=[position])
    with store.shard_writer("s0", rid, [it.sample_id for it in items]) as w:
        w.write("input", position, layer, h[(position, layer)].numpy(), "float32")
    return store, h[(position, layer)]


def test_l2s_with_l_prime_deeper_than_l_star_uses_the_unsteered_cached_h(llava, tmp_path):
    items = make_items(4)
    cached_items, fresh = items[:2], items[2:]
    store, h_cached = _cache_store(tmp_path, llava, cached_items, layer=L_PRIME)
    src = _sources(llava, cache=ActivationCache(store.snapshot(), input_recipe="eval-input"))
    gen = SteeredGenerator(llava, src, max_new_tokens=4)
    m = get_method("l2s")
    # Steer with a large vector at L* for the whole call: a capture made under it would read a
    # different h at L' > L*.
    big = torch.randn(llava.hidden_size) * 50
    chats = [ChatInput(it.image, it.query) for it in items]
    plain = llava.capture(chats, layers=[L_PRIME], positions=["prompt_last"])[("prompt_last", L_PRIME)]
    with llava.steering(L_STAR, big, 1.0):
        steered_h = llava.capture(chats, layers=[L_PRIME], positions=["prompt_last"])[("prompt_last", L_PRIME)]
    assert (steered_h - plain).abs().max() > 1e-2
    v = gen.vectors(m, items)
    h_used = src.predictor.seen[-1]
    assert torch.equal(h_used[:2], h_cached)                      # the cached rows, as stored
    torch.testing.assert_close(h_used[2:], plain[2:], atol=1e-5, rtol=1e-5)  # unsteered prefill
    assert src.provenance == {"s00": "cache", "s01": "cache", "s02": "prefill", "s03": "prefill"}
    torch.testing.assert_close(v, h_used @ src.predictor.weight)
    # The items' encodings handed in (a server encodes a batch once): the prefilled rows read
    # their own encodings (rows 2 and 3 of four), the vectors are the same.
    src.provenance.clear()
    assert torch.equal(gen.vectors(m, items, encoded=llava.encode_items(chats)), v)
    assert torch.equal(src.predictor.seen[-1], h_used)
    # Generating reuses no steered state: the same vectors come out on a second call.
    gen.generate(m, 3.0, items, vectors=v)
    torch.testing.assert_close(gen.vectors(m, items), v)
    assert len(fresh) == 2


def test_p2s_star_comes_from_the_cache_or_the_samples_pair(llava, tmp_path):
    items = make_items(3)
    cis = [ContrastiveItem(it.image, it.query, *it.pair) for it in items]
    live = llava.capture_contrastive(cis, input_layers=[], input_positions=[], pair_layers=[L_STAR],
                                     pair_positions=["completion_last"])[("p2s", "completion_last", L_STAR)]
    store = Store.open(tmp_path / "store", create=True)
    rid = store.put_recipe({"test": "pair"}, name="eval-pair")
    planted = torch.randn(1, llava.hidden_size)
    with store.shard_writer("s0", rid, [items[0].sample_id]) as w:
        w.write("p2s", "completion_last", L_STAR, planted.numpy(), "float32")
    src = _sources(llava, cache=ActivationCache(store.snapshot(), pair_recipe="eval-pair"))
    gen = SteeredGenerator(llava, src, max_new_tokens=2)
    v = gen.vectors(get_method("p2s"), items)
    assert torch.equal(v[0], planted[0])
    torch.testing.assert_close(v[1:], live[1:], atol=1e-5, rtol=1e-5)
    rnd = gen.vectors(get_method("norm-rnd"), items)
    torch.testing.assert_close(rnd.norm(dim=1), v.norm(dim=1), atol=1e-4, rtol=1e-5)
    assert abs(torch.nn.functional.cosine_similarity(rnd[1], v[1], dim=0)) < 0.9
    # A sample's random direction does not depend on its batch, and is training's Norm-Rnd.
    assert torch.equal(gen.vectors(get_method("norm-rnd"), items[1:])[0], rnd[1])
    from l2s_data.steer import norm_rnd_of

    torch.testing.assert_close(rnd, torch.from_numpy(norm_rnd_of([it.sample_id for it in items], v.numpy(), 0)))
    no_pair = [type(it)(it.sample_id, it.image, it.query, it.task, None) for it in items]
    with pytest.raises(KeyNotFoundError, match="2 sample\\(s\\) have no cached P2S vector"):
        gen.vectors(get_method("p2s"), no_pair)


def test_prompt_only_adds_the_tasks_instruction_and_unsteered_methods_ignore_alpha(llava):
    items = make_items(2, task="pope")
    gen = SteeredGenerator(llava, _sources(llava), max_new_tokens=3)
    chats = gen.chat_inputs(get_method("prompt-only"), items)
    assert chats[0].query == "Examine the image carefully and answer: " + items[0].query
    assert gen.generate(get_method("none"), 5.0, items) == gen.generate(get_method("none"), None, items)
    with pytest.raises(ConfigError, match="needs an alpha"):
        gen.generate(get_method("mean-s"), None, items)
    bare = SteeredGenerator(llava, VectorSources(steer_layer=L_STAR), max_new_tokens=3)
    with pytest.raises(ConfigError, match="L2S needs a trained predictor"):
        bare.vectors(get_method("l2s"), items)
    with pytest.raises(ConfigError, match="Mean-S needs its vector"):
        bare.vectors(get_method("mean-s"), items)


def test_seeded_sampling_repeats_and_greedy_is_the_default(llava, items):
    src = _sources(llava)
    a = SteeredGenerator(llava, src, max_new_tokens=6, do_sample=True, seed=3)
    b = SteeredGenerator(llava, src, max_new_tokens=6, do_sample=True, seed=3)
    m = get_method("mean-s")
    assert a.generate(m, 1.0, items) == b.generate(m, 1.0, items)
    assert SteeredGenerator(llava, src).do_sample is False


def test_methods_docstring_examples_run():
    assert doctest.testmod(methods_mod).failed == 0


def test_a_cache_of_another_models_width_is_refused(llava, tmp_path):
    items = make_items(2)
    store = Store.open(tmp_path / "store", create=True)
    rid = store.put_recipe({"test": "narrow"}, name="narrow")
    with store.shard_writer("s0", rid, [it.sample_id for it in items]) as w:
        w.write("input", "prompt_last", L_PRIME, torch.zeros(2, 32).numpy(), "float32")
    src = _sources(llava, cache=ActivationCache(store.snapshot(), input_recipe="narrow"))
    with pytest.raises(ConfigError, match="have 32 dims, but the model's hidden size is 64"):
        SteeredGenerator(llava, src).vectors(get_method("l2s"), items)
