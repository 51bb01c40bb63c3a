"""One benchmark per case (variant x batch x prompt length x new tokens x pick x dtype x weights' scheme): time,
memory, correctness.

Parametrized in conftest.py (pytest_generate_tests); see docs/BENCHMARKS.md.
"""
from __future__ import annotations

import statistics
import time

import pytest

import bench_support as bs
from llama_fast import harness
from llama_fast.api import DeviceError, check_dtype_on_device, output_hash


def test_generate(benchmark, bench_ctx, case):
    started = time.perf_counter()
    ctx, w, dtype, variant = bench_ctx, case.workload, case.torch_dtype, case.v
    cfg = ctx.cfg
    if w.prompt_len + w.new_tokens > cfg.max_position_embeddings:
        pytest.skip(f"prompt {w.prompt_len} + {w.new_tokens} new tokens exceeds {ctx.model}'s "
                    f"{cfg.max_position_embeddings} positions")
    try:
        check_dtype_on_device(dtype, ctx.device)
    except DeviceError as e:
        pytest.skip(str(e))

    timed = not benchmark.disabled  # --benchmark-disable / xdist: one plain call, correctness only
    ceilings = ctx.ceilings(dtype) if timed else None  # once per run and dtype, before the models load
    # transformers runs even a quantized case's weights dequantized, in the model dtype: its bytes are the dtype's
    quantize = None if variant.is_transformers else case.quantize
    budget = harness.memory_budget_bytes(cfg, dtype, w, bs.allowance_bytes(variant, cfg, dtype, w), quantize=quantize)
    if variant.is_transformers:
        torch_reset()
        runner = harness.hf_runner(ctx.hf(dtype, case.quantize, exclusive=True), ctx.tokenizer, variant, w)
        fast = None
        # the reference, never gated: its warm-up call ran the whole workload (allocator grown, compiled)
        rounds, warmup_rounds = ctx.reference_rounds, 0
    else:
        fast = ctx.fast(dtype, case.quantize, budget)
        torch_reset()  # drop the previous case's compiled graphs (and their CUDA-graph memory)
        runner = harness.fast_runner(fast, variant, w)
        rounds, warmup_rounds = ctx.rounds, ctx.warmup
    call_once = harness.synchronized(runner, w.prompt())
    outs = []

    def call():  # each round's tokens kept (a clone: microseconds of a round's hundreds of milliseconds)
        o = call_once()
        outs.append(o.clone())
        return o

    setup_s = time.perf_counter() - started

    warmup_s = None
    if timed:
        with harness.DeviceTimer(ctx.device) as t:  # compile (if any) + first run: never timed by the benchmark
            call()
        warmup_s = t.seconds
    injected = ctx.inject_slowdown(fast, call, case) if fast is not None and timed else {}
    other = 0 if variant.is_transformers else ctx.other_model_bytes  # transformers beside ours, not our memory
    try:
        with harness.PeakMemory(ctx.device, runner.graph_pool_bytes) as mem:  # our CUDA-graph pools counted
            out = benchmark.pedantic(call, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    finally:
        if fast is not None:
            fast.step_hook = None
    peak = mem.peak - other
    rounds_out = outs[len(outs) - max(rounds, 1):]  # the timed rounds (warm-up and injection calls before them)
    assert harness.outputs_agree(rounds_out), (
        f"{case.id}: the timed rounds generated different tokens from the same prompt (greedy, or sampling with "
        "its seed): a race in a kernel or a collective")
    out = out.cpu()
    our_hash = output_hash(runner.tokenizer, out)
    if case.variant == bs.REFERENCE:
        ctx.set_reference(case, out, our_hash)

    tokens = w.batch * w.new_tokens
    assert out.shape == (w.batch, w.prompt_len + w.new_tokens), f"expected exactly {w.new_tokens} new tokens"
    roofline = harness.roofline_tok_per_s(cfg, dtype, w, ceilings, quantize=quantize) if ceilings else None
    stats = getattr(benchmark, "stats", None)
    median = statistics.median(stats.stats.data) if stats else None
    tok_s = tokens / median if median else None
    benchmark.extra_info.update(
        model=ctx.model, variant=case.variant, label=variant.label, compile=variant.compile,
        prefill_chunk=variant.prefill_chunk, batch=w.batch, prompt_len=w.prompt_len, new_tokens=w.new_tokens,
        cache_length=w.cache, dtype=case.dtype, quantize=case.quantize, pick=w.pick, tokens=tokens,
        load_peak_mb=fast.load_peak_bytes / bs.MB if fast is not None else None,
        tok_per_s=tok_s, tok_per_s_best=tokens / min(stats.stats.data) if stats else None,
        roofline_tok_per_s=roofline, roofline_fraction=tok_s / roofline if tok_s and roofline else None,
        max_mem_mb=peak / bs.MB, mem_budget_mb=budget / bs.MB,
        memory_kind=("max_memory_allocated + llama_fast CUDA-graph pools" if ctx.device.type == "cuda"
                     else "peak RSS (process)")
                    + (f" - transformers' weights kept on the device ({other / bs.MB:.0f} MB)" if other else ""),
        warmup_s=warmup_s, setup_s=setup_s, rounds=rounds, warmup_rounds=warmup_rounds, hash=our_hash,
        gpu=harness.device_name(ctx.device), device_family=ctx.family, injected_slowdown=0.0,
    )
    benchmark.extra_info.update(injected)

    checked = time.perf_counter()
    notes = bs.check_output(
        case=case, model=ctx.model, family=ctx.family, book=ctx.book, output_ids=out, our_hash=our_hash,
        reference=lambda: ctx.reference(case),
        teacher_forced=lambda ids, tol: ctx.teacher_forced(case, ids, tol), update=ctx.update,
        nucleus=lambda ids, tol: ctx.nucleus(case, ids, tol))
    benchmark.extra_info["correctness"] = "; ".join(notes)
    benchmark.extra_info["check_s"] = time.perf_counter() - checked

    if ctx.device.type == "cuda":  # on CPU the peak is the whole process' RSS: recorded, not gated
        allowance = "TRANSFORMERS_ALLOWANCE_MB" if variant.is_transformers else "LLAMA_FAST_ALLOWANCE_MB"
        assert peak <= budget, (
            f"{case.id}: peak memory {peak / bs.MB:.0f} MB exceeds the budget {budget / bs.MB:.0f} MB "
            f"(weights + KV cache + {allowance} + prefill activations; see bench_support.py)")


def torch_reset():
    import torch

    torch._dynamo.reset()
