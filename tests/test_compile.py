"""compile.py: a fixed cache length and fixed prefill chunks mean no recompile when the prompt length
changes. The mechanism is device-independent; on CUDA the decode step is additionally one hand-captured
graph, which must not be captured again either, and the fastest path's Triton kernels are in the step."""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from llama_fast.config import NAMED_SHAPES
from llama_fast.generate import LlamaFast
from llama_fast.harness import VARIANTS, FASTEST
from llama_fast.loading import IdTokenizer, RandomSource, build_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="the CUDA-graph and Triton half of this check needs a CUDA GPU")


@pytest.fixture
def exact_fp32():
    """TF32 off (fp32 token parity on GPU needs it) and a fresh Dynamo state, both put back afterwards."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch._dynamo.reset()
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch._dynamo.reset()


def tiny_pair(device, options, cache_length: int):
    """(cfg, model, fast, eager): the tiny fp32 model, compiled (fullgraph, 16-token prefill chunks) with
    options, and the eager reference over the same weights."""
    cfg = NAMED_SHAPES["tiny"]
    model = build_model(cfg, RandomSource(cfg, 0, device, torch.float32), device, torch.float32)
    tok = IdTokenizer(cfg.vocab_size, None, 0)
    fast = LlamaFast(model, tok, options=options, compile="fullgraph", prefill_chunk=16, cache_length=cache_length)
    eager = LlamaFast(model, tok, prefill_chunk=None, cache_length=cache_length)
    return cfg, model, fast, eager


def options_of(spec: str):
    """The ForwardOptions of a variant key, or of key+flag[+flag...] (those flags switched on)."""
    key, *flags = spec.split("+")
    return replace(VARIANTS[key].options, **{flag: True for flag in flags})


@pytest.mark.slow
@pytest.mark.parametrize("device,variant", [("cpu", v) for v in dict.fromkeys([FASTEST, "fused-glue"])] + [
    pytest.param("cuda", v, marks=needs_cuda)
    # fused plus one of fused-eager's two kernels: RoPE in the qkv GEMV (a block of only our kernels, run
    # eagerly, with the two-kernel attention), or the one-launch attention inside the compiled block (what
    # fused-eager compiles where the head dim rules out RoPE in the qkv GEMV)
    for v in dict.fromkeys([FASTEST, "gemv", "fused", "fused+fused_rope_cache", "fused+attention_one_launch",
                            "fused-eager", "fused-pdl", "fused-glue", "fused-prefill-graph"])])
def test_no_recompile_when_the_prompt_length_changes(device, variant, exact_fp32):
    from torch._dynamo.utils import counters

    options = options_of(variant)
    cfg, model, fast, eager = tiny_pair(device, options, 96)
    before = counters["stats"]["unique_graphs"]  # counters are process-wide: count from here
    for T in (5, 16, 23, 40):  # shorter than, equal to, and longer than the chunk (with an overlapping tail)
        ids = torch.randint(3, cfg.vocab_size, (1, T))
        out = fast.generate(ids, max_new_tokens=6, min_new_tokens=6)
        if T == 5:
            graphs_after_first = counters["stats"]["unique_graphs"]
            captured = len(getattr(fast.steps[1], "_graphs", {}))
            # read while fast's options are on the model (the eager reference below binds its own)
            kernels_only = device == "cuda" and model.fused_block_is_kernels_only()
        assert torch.equal(out, eager.generate(ids, max_new_tokens=6, min_new_tokens=6))
    # one block graph for the prefill chunk shape, one for the decode step (unless the decode block is only
    # our Triton kernels and runs eagerly in the captured step); with compiled glue, the input preparation
    # of both shapes and the greedy pick; nothing new for later lengths
    glue = 3 if options.compiled_glue else 0
    assert graphs_after_first - before == (1 if kernels_only else 2) + glue
    assert counters["stats"]["unique_graphs"] == graphs_after_first
    if device == "cuda":
        assert captured == 1 and len(fast.steps[1]._graphs) == 1  # the decode graph, captured once
        if options.graphed_prefill:  # the 16-token chunk's graph, captured once (at the second prompt)
            assert len(fast.steps[0]._graphs) == 1
        assert fast.graph_pool_bytes() > 0  # counted into measured peaks (harness.Runner.graph_pool_bytes)


@pytest.mark.slow
@needs_cuda
def test_batched_compiled_decode_launches_no_pdl_kernel(exact_fp32):
    """Above batch 1 the decode step runs the compiled block, whose Triton attention Inductor traces. A kernel
    traced with PDL carries gdc inline asm that Inductor's mutation analysis cannot read: it then assumes every
    argument written (a batch-16 step 5 % slower, docs/PERF.md). Tokens must also equal eager's."""
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep(logging.WARNING)
    with contextlib.ExitStack() as stack:
        # triton_kernel_wrap logs its fallback on the torch._dynamo logger (torch 2.11 and 2.13)
        for name in ("torch._dynamo", "torch._higher_order_ops"):
            logging.getLogger(name).addHandler(handler)
            stack.callback(logging.getLogger(name).removeHandler, handler)
        # a graph loaded from Inductor's or AOTAutograd's cache is not traced again: the analysis runs in tracing
        stack.enter_context(torch._inductor.config.patch(fx_graph_cache=False))
        stack.enter_context(torch._functorch.config.patch(enable_autograd_cache=False))

        opts = VARIANTS[FASTEST].options
        assert opts.pdl and opts.decode_attention
        cfg, _, fast, eager = tiny_pair("cuda", opts, 64)
        ids = torch.randint(3, cfg.vocab_size, (2, 20))
        out = fast.generate(ids, max_new_tokens=6, min_new_tokens=6)
        assert torch.equal(out, eager.generate(ids, max_new_tokens=6, min_new_tokens=6))
        assert not [m for m in records if "mutated" in m], records[:1]


def test_configure_inductor_leaves_the_fx_graph_cache_setting_alone():
    """A user's TORCHINDUCTOR_FX_GRAPH_CACHE=0 (or a config.patch) must survive the compile setup: it used to be
    forced on, which also defeated the cache-off patch of the batched-decode test above."""
    from llama_fast.compile import configure_inductor

    with torch._inductor.config.patch(fx_graph_cache=False):
        configure_inductor()
        assert torch._inductor.config.fx_graph_cache is False


def test_compile_caches_are_keyed_on_the_kernel_settings(monkeypatch):
    """configure_inductor puts a digest of the kernel modules' sources and settings into torch.compile's cache
    key, after a tag of the caller's own: a changed pin (here the GQA attention switch) or the table hidden gives
    another key, the same settings the same key in a fresh process."""
    import subprocess
    import sys

    pytest.importorskip("llama_fast.kernels", reason="triton is not installed: llama_fast.kernels needs it")
    if not hasattr(torch.compiler.config, "cache_key_tag"):
        pytest.skip(f"torch {torch.__version__} has no torch.compiler.config.cache_key_tag")
    from llama_fast import compile as lc
    from llama_fast.kernels import configs

    monkeypatch.setattr(torch.compiler.config, "cache_key_tag", "mine")
    monkeypatch.delenv("LLAMA_FAST_CONFIG_TABLE", raising=False)
    lc.configure_inductor()
    tag = torch.compiler.config.cache_key_tag
    assert tag.startswith("mine|" + lc.CACHE_TAG_MARK) and len(tag) == len("mine|") + len(lc.CACHE_TAG_MARK) + 16
    monkeypatch.setattr(configs, "ATTN_GQA_DOT", not configs.ATTN_GQA_DOT)
    flipped = lc.tag_compile_caches()
    assert flipped != tag and flipped.startswith("mine|" + lc.CACHE_TAG_MARK)  # one tag of ours, replaced
    monkeypatch.setattr(configs, "ATTN_GQA_DOT", not configs.ATTN_GQA_DOT)
    assert lc.tag_compile_caches() == tag
    monkeypatch.setattr(configs, "CONFIG_OVERRIDE", lambda form, n, K: None)  # a trial hook: a key of its own
    trial = lc.tag_compile_caches()
    assert trial != tag and lc.tag_compile_caches() != trial
    monkeypatch.setattr(configs, "CONFIG_OVERRIDE", None)
    assert lc.tag_compile_caches() == tag
    monkeypatch.setenv("LLAMA_FAST_CONFIG_TABLE", "0")  # the table hidden: configs from the tuning path
    assert lc.tag_compile_caches() != tag
    monkeypatch.delenv("LLAMA_FAST_CONFIG_TABLE")
    assert lc.tag_compile_caches() == tag
    fresh = subprocess.run([sys.executable, "-c", "import torch; "
                            "from llama_fast import compile as c; torch.compiler.config.cache_key_tag = 'mine'; "
                            "print(c.tag_compile_caches())"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert fresh.stdout.strip().splitlines()[-1] == tag


def test_sticky_graph_inputs_are_copied_only_when_they_change():
    """A graphed sampled step copies its sampling parameters only when they change: a new tensor (even one
    with a freed tensor's id), or the same tensor written in place."""
    from llama_fast.compile import copy_inputs

    static = [torch.zeros(2), torch.zeros(2)]
    copied = [None]
    tok, params = torch.tensor([1.0, 2.0]), torch.tensor([0.8, 0.9])
    copy_inputs(static, (tok, params), copied)
    assert static[1].tolist() == params.tolist()
    static[1].fill_(-1)  # a copy now would be visible
    copy_inputs(static, (tok + 1, params), copied)
    assert static[0].tolist() == [2.0, 3.0] and static[1].tolist() == [-1, -1]  # params unchanged: not copied
    params.mul_(2)  # in place: its version moves
    copy_inputs(static, (tok, params), copied)
    assert static[1].tolist() == pytest.approx([1.6, 1.8])
    del params
    fresh = torch.tensor([0.5, 0.5])  # another tensor (the held one keeps its id from being reused): copied
    copy_inputs(static, (tok, fresh), copied)
    assert static[1].tolist() == [0.5, 0.5]
