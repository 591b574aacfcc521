"""A sampled continuation is stored as the reference computes it: the forced completion's ids,
then the generated ids, read by a plain transformers forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l2s_data.extract import Extraction, ExtractionWorker, parse_config
from l2s_data.models import ChatInput
from l2s_data.models.encoding import messages_for, render
from l2s_data.store import Store

N = 13
BEHAVIOR = {"llava": "safety-llava", "qwen2-vl": "safety-qwen"}
COMPLETION = {"max_new_tokens": 4, "do_sample": True, "seed": 5, "include_last_generated": False}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from l2s_data.datasets import make_synthetic

    out = tmp_path_factory.mktemp("synthetic-safety")
    make_synthetic("synthetic-safety", out, n=N)
    return out


def _plain_forward(adapter, chat: ChatInput, generated: tuple[int, ...], layer: int) -> tuple[torch.Tensor, ...]:
    """hidden_states[layer + 1] of the forced completion's ids plus ``generated``, straight through
    transformers: the mean over every token after the prompt, and the last token."""
    proc = adapter.processor
    opened = render(proc, messages_for(chat), continue_final_message=True)
    inputs = proc(text=[opened], images=[chat.image], return_tensors="pt")
    n_prompt = proc(text=[render(proc, messages_for(chat, with_completion=False), add_generation_prompt=True)],
                    images=[chat.image], return_tensors="pt")["input_ids"].shape[1]
    extra = torch.tensor([list(generated)], dtype=torch.long)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], extra], 1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(extra)], 1)
    with torch.no_grad():
        hs = adapter.model(**inputs, output_hidden_states=True).hidden_states[layer + 1][0]
    return hs[n_prompt:].mean(0), hs[-1]


@pytest.mark.parametrize("prefix_sharing", [True, False], ids=["prefix-shared", "separate"])
@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_stored_rows_of_a_sampled_continuation_equal_a_plain_forward_of_the_ids(
    family, prefix_sharing, tiny_checkpoint, tiny_adapter, data_dir, tmp_path
):
    adapter = tiny_adapter(family)
    cfg = parse_config({
        "model": {"path": str(tiny_checkpoint(family))},
        "data": {"path": str(data_dir)},
        "behavior": {"behavior": BEHAVIOR[family]},
        "recipe": {"views": ["pos", "neg", "p2s"], "layers": [1], "store_dtype": "float32",
                   "pair_positions": ["completion_mean", "sequence_last"], "completion": COMPLETION},
        "run": {"store": str(tmp_path / "store"), "batch_size": 4, "shard_size": 8, "prefix_sharing": prefix_sharing},
    }, source="(test)")
    ex = Extraction(cfg, adapter=adapter)
    report = ex.run()
    assert report.computed_samples == N and report.quarantined == 0
    rid = report.recipe_ids["pair"]
    snap = Store.open(tmp_path / "store").snapshot()

    # The same batches and seeds as the run (they depend on the plan alone), generated again.
    worker = ExtractionWorker(ex.job(report.plan.recipes), adapter=adapter, dataset=ex.dataset)
    checked = 0
    for shard in report.plan.shards:
        for batch in worker.prepare(shard):
            conts = worker.continuations(batch.rows, worker.generation_seed(batch))
            ids = [r.item.sample_id for r in batch.rows]
            stored = {(v, p): snap.read(rid, v, p, 1, ids) for v in ("pos", "neg")
                      for p in ("completion_mean", "sequence_last")}
            for j, (row, cont) in enumerate(zip(batch.rows, conts, strict=True)):
                suffix, pos, neg = row.item.pair
                for view, text, gen in (("pos", pos, cont[0]), ("neg", neg, cont[1])):
                    assert len(gen) == COMPLETION["max_new_tokens"] - 1  # the last one is not fed back
                    mean, last = _plain_forward(adapter, ChatInput(row.image, row.item.query, suffix, text), gen, 1)
                    np.testing.assert_allclose(stored[(view, "completion_mean")][j], mean.numpy(), atol=1e-4, rtol=1e-4)
                    np.testing.assert_allclose(stored[(view, "sequence_last")][j], last.numpy(), atol=1e-4, rtol=1e-4)
                    checked += 1
    assert checked == 2 * N
