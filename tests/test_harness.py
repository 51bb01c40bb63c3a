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


# Llama-7B's linear layers: per block wqkv (12288 x 4096), wo (4096 x 4096), w13 (22016 x 4096),
# w2 (4096 x 11008), then the untied head (32000 x 4096). Every K (4096, 11008) is a multiple of 128.
LLAMA_7B_LINEAR = 32 * (12288 * 4096 + 4096 * 4096 + 22016 * 4096 + 4096 * 11008) + 32000 * 4096
LLAMA_7B_ROWS = 32 * (12288 + 4096 + 22016 + 4096) + 32000  # output channels: int8 scales
LLAMA_7B_OTHER = 32 * 2 * 4096 + 4096  # the norms, in fp16 with any scheme (the embedding on top)


def test_quantized_weight_bytes_by_hand_for_llama_7b():
    cfg = NAMED_SHAPES["llama-7b"]
    assert LLAMA_7B_LINEAR + LLAMA_7B_OTHER == cfg.num_parameters(include_embedding=False)
    int8 = LLAMA_7B_LINEAR + 2 * LLAMA_7B_ROWS + 2 * LLAMA_7B_OTHER
    int4 = LLAMA_7B_LINEAR // 2 + 2 * 2 * LLAMA_7B_LINEAR // 128 + 2 * LLAMA_7B_OTHER  # + fp16 scales and offsets
    embedding = 2 * 32000 * 4096
    assert harness.weight_bytes(cfg, torch.float16, include_embedding=False, quantize="int8") == int8
    assert harness.weight_bytes(cfg, torch.float16, include_embedding=False, quantize="int4:g128") == int4
    assert harness.weight_bytes(cfg, torch.float16, quantize="int4:g128") == int4 + embedding
    assert harness.weight_bytes(cfg, torch.float16, quantize="int4:g32") > int4 + embedding  # 4x the scales
    assert harness.weight_bytes(cfg, torch.float16) == 13_476_831_232  # without a scheme: unchanged
    assert int8 / 13.21e9 == pytest.approx(0.5, abs=0.01) and int4 / 13.21e9 == pytest.approx(0.266, abs=0.001)


def test_quantized_bytes_follow_the_group_fallback_and_a_tied_head():
    from llama_fast import quant
    from llama_fast.config import LlamaConfig

    # K = 96 (w2): group 128 falls back to 32; a tied head stays in the model dtype, counted once
    cfg = LlamaConfig(vocab_size=100, dim=64, n_layers=1, n_heads=4, intermediate_size=96, tie_word_embeddings=True)
    g = {"wqkv": 64, "wo": 64, "w13": 64, "w2": 32}
    shapes = {"wqkv": (192, 64), "wo": (64, 64), "w13": (192, 64), "w2": (64, 96)}
    linear = sum(n * k // 2 + 2 * 4 * n * (k // g[name]) for name, (n, k) in shapes.items())
    other = cfg.num_parameters() - sum(n * k for n, k in shapes.values())  # norms + the tied embedding/head
    with pytest.warns(quant.QuantWarning):
        quant.layer_schemes(cfg, "int4")
    assert harness.weight_bytes(cfg, torch.float32, quantize="int4") == linear + 4 * other


def test_quantized_roofline_counts_the_bytes_read():
    cfg = NAMED_SHAPES["llama-7b"]
    w = Workload(1, 1000, 200)
    c = Ceilings(matmul_flops=781e12, copy_bytes=4.25e12)
    n = cfg.num_parameters(include_embedding=False)
    prefill = 2 * n * 1000 + 2 * 32 * 1000 * 1000 * 4096  # the same FLOPs: prefill multiplies dequantized weights
    kv_per_pos = 2 * 32 * 32 * 128 * 2
    for scheme, low, high in [("int8", 470, 600), ("int4:g128", 800, 1000)]:
        wbytes = harness.weight_bytes(cfg, torch.float16, include_embedding=False, quantize=scheme)
        decode = sum(wbytes + kv_per_pos * (1000 + i) for i in range(1, 200))
        got = harness.roofline_tok_per_s(cfg, torch.float16, w, c, quantize=scheme)
        assert got == pytest.approx(200 / (prefill / 781e12 + decode / 4.25e12), rel=1e-12)
        assert low < got < high, (scheme, got)
    assert harness.roofline_tok_per_s(cfg, torch.float16, w, c, quantize=None) == \
        harness.roofline_tok_per_s(cfg, torch.float16, w, c)
    budget = harness.memory_budget_bytes(cfg, torch.float16, w, 64_000_000, quantize="int4:g128")
    assert budget == harness.weight_bytes(cfg, torch.float16, quantize="int4:g128") + 629_145_600 + 64_000_000


def test_ablation_ends_with_the_quantized_rows_of_the_fastest_path():
    assert harness.ABLATION[-3:] == [harness.FASTEST, "int8", "int4"] and len(harness.ABLATION) == 20
    fastest = harness.VARIANTS[harness.FASTEST]
    for key, scheme in [("int8", "int8"), ("int4", "int4:g128")]:
        v = harness.VARIANTS[key]
        assert (v.options, v.compile, v.prefill_chunk, v.hf_cache) == \
            (fastest.options, fastest.compile, fastest.prefill_chunk, fastest.hf_cache)
        assert v.quantize == scheme and v.roofline_quantize == scheme
    assert all(harness.VARIANTS[k].quantize is None for k in harness.ABLATION[:-2])
    hf = harness.variant_for(False, "no", quantize="int8")
    assert hf.is_transformers and hf.quantize == "int8" and hf.roofline_quantize is None  # dequantized weights
    assert harness.variant_for(True, "static", quantize="int4:g64").quantize == "int4:g64"


def test_memory_budget_is_weights_plus_cache_plus_allowance():
    cfg = NAMED_SHAPES["llama-7b"]
    w = Workload(1, 1000, 200)
    budget = harness.memory_budget_bytes(cfg, torch.float16, w, allowance_bytes=64_000_000)
    assert budget == 13_476_831_232 + 629_145_600 + 64_000_000  # the brief's 13,477 + 629 MB floor


def test_call_seconds_times_reps_runs_of_calls_on_cpu():
    """call_seconds: one figure a run, each the run's time over its calls (the wall clock off a GPU)."""
    import time

    n = []
    times = harness.call_seconds(lambda: (n.append(1), time.sleep(0.002)), torch.device("cpu"), calls=3, reps=4)
    assert len(n) == 12 and len(times) == 4 and all(0.002 <= t < 0.5 for t in times)


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
    assert m.runs_agree


def test_measure_flags_runs_that_generate_different_tokens():
    """A runner whose output changes from one timed run to the next (what a race would do) is flagged, and the
    CLI's row says so; the warm-up run is not compared."""
    from llama_fast.cli.runner import Result

    cfg = TINY_CONFIGS["gqa"]
    fast = fast_from_hf(make_hf(cfg, seed=3), cfg)
    w = Workload(batch=1, prompt_len=4, new_tokens=3)
    calls = []

    def flaky(ids):
        calls.append(1)
        out = torch.cat([ids, torch.full((1, 3), len(calls) if len(calls) == 3 else 7)], dim=1)
        return out.clone()

    v = harness.VARIANTS["gate-up"]
    runner = harness.Runner(v, flaky, fast.tokenizer, torch.device("cpu"), None)
    steady = harness.measure(runner, w, warmup_runs=1, num_runs=1)  # calls 1 and 2: one timed run
    assert steady.runs_agree and Result(v, w, steady).status == "ok"
    calls.clear()
    m = harness.measure(runner, w, warmup_runs=0, num_runs=3)  # the third run differs
    assert not m.runs_agree and Result(v, w, m).status == "nondeterministic"
    calls.clear()
    m = harness.measure(runner, w, warmup_runs=3, num_runs=2)  # the odd call is a warm-up: not compared
    assert m.runs_agree


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
    "fused-gemv-early": "CUDA graphs, Triton kernels, PDL", "fused-gemm": "CUDA graphs, Triton kernels, PDL",
    "fused-gemm-kernels": "CUDA graphs, Triton kernels, PDL",
    "int8": "CUDA graphs, Triton kernels, PDL",
    "int4": "CUDA graphs, Triton kernels, PDL"}


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
