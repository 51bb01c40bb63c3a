"""The shared harness: seed prompt, roofline formula, memory budget, timers, commit string, teacher forcing."""
from __future__ import annotations

import statistics

import pytest
import torch

from core_helpers import TINY_CONFIGS, fast_from_hf, make_hf
from llama_fast import harness
from llama_fast.config import NAMED_SHAPES
from llama_fast.harness import Ceilings, Workload


def test_seed_prompt():
    torch.manual_seed(42)
    expected = torch.randint(1, 10, (2, 7))
    torch.manual_seed(0)  # the workload reseeds itself
    assert torch.equal(Workload(batch=2, prompt_len=7, new_tokens=3).prompt(), expected)
    assert Workload(1, 1000, 200).cache == 1200 and Workload(1, 1000, 200, cache_length=2048).cache == 2048


def test_roofline_matches_a_hand_count_for_llama_7b():
    cfg = NAMED_SHAPES["llama-7b"]
    w = Workload(1, 1000, 200)
    c = Ceilings(matmul_flops=781e12, copy_bytes=4.25e12)
    n = 6_607_343_616  # non-embedding parameters (output head included)
    prefill = 2 * n * 1000 + 2 * 32 * 1000 * 1000 * 4096
    kv_per_pos = 2 * 32 * 32 * 128 * 2
    decode = sum(2 * n + kv_per_pos * (1000 + i) for i in range(1, 200))
    expected = 200 / (prefill / 781e12 + decode / 4.25e12)
    got = harness.roofline_tok_per_s(cfg, torch.float16, w, c)
    assert got == pytest.approx(expected, rel=1e-12)
    assert 290 < got < 310  # the brief: "about 300 tok/s" on an H200
    # batch 4 streams the weights once for 4 tokens a step, but prefill FLOPs and KV reads grow 4x: 3-4x
    assert 3.0 < harness.roofline_tok_per_s(cfg, torch.float16, Workload(4, 1000, 200), c) / got < 4.0


def test_memory_budget_is_weights_plus_cache_plus_allowance():
    cfg = NAMED_SHAPES["llama-7b"]
    w = Workload(1, 1000, 200)
    budget = harness.memory_budget_bytes(cfg, torch.float16, w, allowance_bytes=64_000_000)
    assert budget == 13_476_831_232 + 629_145_600 + 64_000_000  # the brief's 13,477 + 629 MB floor


def test_device_timer_and_peak_memory_on_cpu():
    dev = torch.device("cpu")
    with harness.DeviceTimer(dev) as t, harness.PeakMemory(dev) as m:
        x = torch.ones(64 * 1024 * 1024 // 4)  # 64 MB
        x.add_(1)
    assert t.seconds > 0
    assert m.peak >= 64 * 1024 * 1024
    del x


def test_git_commit(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMA_FAST_COMMIT", "abc1234")
    assert harness.git_commit() == "abc1234"
    monkeypatch.delenv("LLAMA_FAST_COMMIT")
    assert harness.git_commit(str(tmp_path)) == "unknown"  # not a checkout


def test_measure_counts_new_tokens_and_hashes_the_output():
    cfg = TINY_CONFIGS["gqa"]
    hf = make_hf(cfg, seed=3)
    fast = fast_from_hf(hf, cfg)
    w = Workload(batch=2, prompt_len=6, new_tokens=5)
    eager = harness.Variant("eager", "eager", harness.VARIANTS["gate-up"].options)
    m = harness.measure(harness.fast_runner(fast, eager, w), w, warmup_runs=1, num_runs=2)
    assert m.output_ids.shape == (2, 11) and len(m.times) == 2
    assert m.tok_per_s == pytest.approx(2 * 5 / statistics.median(m.times))
    assert m.tok_per_s_best == pytest.approx(2 * 5 / min(m.times)) and m.tok_per_s_best >= m.tok_per_s
    ref = harness.measure(harness.hf_runner(hf, fast.tokenizer, harness.VARIANTS["hf"], w), w, 0, 1)
    assert ref.hash == m.hash  # fp32 on CPU: the same greedy tokens


def test_teacher_forced_check_finds_the_first_wrong_token():
    cfg = TINY_CONFIGS["gqa"]
    hf = make_hf(cfg, seed=4)
    fast = fast_from_hf(hf, cfg)
    ids = torch.randint(3, cfg.vocab_size, (1, 8))
    out = fast.generate(ids, max_new_tokens=6, min_new_tokens=6)
    ok, first, gap = harness.teacher_forced_check(hf, out, prompt_len=8, tol=1e-4)
    assert ok and first is None and gap <= 1e-4
    bad = out.clone()
    bad[0, 8 + 3] = (bad[0, 8 + 3] + 1) % cfg.vocab_size  # a token that is not the argmax
    ok, first, gap = harness.teacher_forced_check(hf, bad, prompt_len=8, tol=1e-4)
    assert not ok and first == 3 and gap > 1e-4


# ------------------------------------------------------------------------------------------- fallback rows
CPU_FALLBACK = {  # what of each ablation row's code path needs CUDA; rows not listed run as named on CPU
    "graphs": "CUDA graphs", "gemv": "CUDA graphs, Triton kernels", "fused": "CUDA graphs, Triton kernels",
    "fused-eager": "CUDA graphs, Triton kernels", "fused-pdl": "CUDA graphs, Triton kernels, PDL",
    "fused-glue": "CUDA graphs, Triton kernels, PDL", "fused-prefill-graph": "CUDA graphs, Triton kernels, PDL",
    "fused-gemv-early": "CUDA graphs, Triton kernels, PDL"}


@pytest.mark.parametrize("key", harness.ABLATION)
def test_fallback_reason_of_each_ablation_row(key):
    v = harness.VARIANTS[key]
    reason = harness.fallback_reason(v, torch.device("cpu"))
    if key in CPU_FALLBACK:
        assert reason == f"CUDA only, not run on cpu: {CPU_FALLBACK[key]}"
    else:
        assert reason is None
    assert harness.fallback_reason(v, "cuda") is None and harness.fallback_reason(v, torch.device("cuda:1")) is None


def test_fallback_reason_follows_the_options_not_the_key():
    from llama_fast import ForwardOptions

    eager = harness.Variant("x", "x", ForwardOptions())
    assert harness.fallback_reason(eager, "cpu") is None
    assert harness.fallback_reason(harness.Variant("x", "x", ForwardOptions(), compile="static"), "cpu") is None
    assert harness.fallback_reason(harness.Variant("x", "x", ForwardOptions(decode_attention=True)), "cpu") == \
        "CUDA only, not run on cpu: Triton kernels"
    assert harness.fallback_reason(harness.Variant("x", "x", ForwardOptions(pdl=True)), "cpu") == \
        "CUDA only, not run on cpu: PDL"
    # the CLI's --preallocate variant is the fastest path's options, compiled as asked
    assert harness.fallback_reason(harness.variant_for(True, "no"), "cpu") == \
        "CUDA only, not run on cpu: Triton kernels, PDL"
    assert harness.fallback_reason(harness.variant_for(False, "static"), "cpu") is None  # transformers
