"""compile.py: a fixed cache length and fixed prefill chunks mean no recompile when the prompt length
changes (the mechanism is device-independent; on CUDA the decode step is additionally one captured graph)."""
from __future__ import annotations

import pytest
import torch

from llama_fast.config import NAMED_SHAPES
from llama_fast.generate import LlamaFast
from llama_fast.loading import IdTokenizer, RandomSource, build_model


@pytest.mark.slow
def test_no_recompile_when_the_prompt_length_changes():
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    cfg = NAMED_SHAPES["tiny"]
    model = build_model(cfg, RandomSource(cfg, 0, "cpu", torch.float32), "cpu", torch.float32)
    tok = IdTokenizer(cfg.vocab_size, None, 0)
    fast = LlamaFast(model, tok, compile="fullgraph", prefill_chunk=16, cache_length=96)
    eager = LlamaFast(model, tok, prefill_chunk=None, cache_length=96)
    outs = {}
    before = counters["stats"]["unique_graphs"]  # counters are process-wide: count from here
    for T in (5, 16, 23, 40):  # shorter than, equal to, and longer than the chunk (with an overlapping tail)
        ids = torch.randint(3, cfg.vocab_size, (2, T))
        outs[T] = fast.generate(ids, max_new_tokens=6, min_new_tokens=6)
        if T == 5:
            graphs_after_first = counters["stats"]["unique_graphs"]
        assert torch.equal(outs[T], eager.generate(ids, max_new_tokens=6, min_new_tokens=6))
    # one block graph for the prefill chunk shape, one for the decode step; nothing new for later lengths
    assert graphs_after_first - before == 2
    assert counters["stats"]["unique_graphs"] == graphs_after_first
    torch._dynamo.reset()
