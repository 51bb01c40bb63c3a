"""Performance lab: several variants of one workload in one process on one device, with their ratios, for
docs/PERF.md: tok/s, % of the measured roofline, peak MB, warm-up s, output hash, and optionally a
teacher-forced check, prefill / decode split, memory breakdown, recompile check, compile times, config trials.

  python scripts/perf_lab.py --variants hf-static,fused-prefill-graph,fused-gemv-early --breakdown --log lab.log
  python scripts/perf_lab.py --variants fused-gemv-early --config-trials fused-gemv-early --trial-set 4
  python scripts/perf_lab.py --device cpu --model random:tiny --dtype fp32 --prompt 12 --new 4 --variants hf,kv

Variants: harness.VARIANTS keys, or specs built on one (bench_util.resolve_variants): base+flag / base~flag
switch a ForwardOptions flag on / off (e.g. fused-prefill-graph~attention_one_launch), base@C takes C-token
prefill chunks (e.g. fused-glue@1024).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

from bench_util import check_quantize, config_override, logger, resolve_variants
from llama_fast.harness import (VARIANTS, Workload, device_name, fast_runner, hf_runner, measure, measure_ceilings,
                                memory_budget_bytes, roofline_tok_per_s, teacher_forced_check, weight_bytes)
from llama_fast.loading import load_hf_model, load_weights, parse_dtype


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="perf_lab.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="random:llama-7b")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--variants", default="hf,hf-static,tensor-pos,rope,gate-up,graphs",
                    help="comma-separated variant keys or specs (base+flag, base~flag, base@chunk)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=1000)
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--cache", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--check", action="store_true", help="teacher-forced check of our outputs vs transformers")
    ap.add_argument("--log", default=None, help="also append the output to this file")
    ap.add_argument("--chunk", type=int, default=0, help="override the prefill chunk of our variants")
    ap.add_argument("--quantize", default=None, metavar="SCHEME",
                    help="load llama_fast's model with weight-only quantization (int8, int4, int4:gG): every "
                         "llama_fast variant runs on it, the roofline counts the bytes really read; transformers "
                         "rows keep the model dtype, on the dequantized weights (the same numbers in float)")
    ap.add_argument("--breakdown", action="store_true", help="also time prefill alone (1 new token)")
    ap.add_argument("--memory", action="store_true",
                    help="also print resident memory after warm-up and the peaks of prefill and of a whole run "
                         "(CUDA)")
    ap.add_argument("--recompile", default="",
                    help="comma-separated prompt lengths run after the timed runs at the same cache length: "
                         "prints compiled graphs added and each first call's time (no recompile expected)")
    ap.add_argument("--cold", action="store_true",
                    help="fresh empty inductor and Triton cache directories: the first variant's warm-up is cold")
    ap.add_argument("--compile-times", action="store_true",
                    help="after each variant, print torch._dynamo's compile-time breakdown")
    ap.add_argument("--profile-warmup", default=None, metavar="PATH",
                    help="cProfile the first variant's warm-up + timed runs; pstats dump to PATH, top lines printed")
    ap.add_argument("--autotune-picks", action="store_true",
                    help="after each variant, print the configs Triton's autotuner picked for our kernels "
                         "(eager launches with LLAMA_FAST_GEMV_AUTOTUNE=1; Inductor tunes the kernels it compiles "
                         "itself)")
    ap.add_argument("--config-trials", default=None, metavar="VARIANT",
                    help="the variant's decode under each trial of --trial-set (kernels.configs.CONFIG_OVERRIDE) "
                         "in this process: decode ms/step per trial, the pinned configs first and last")
    ap.add_argument("--trial-set", type=int, default=1, choices=sorted(TRIAL_SETS),
                    help="which of TRIAL_SETS --config-trials runs")
    ap.add_argument("--trial-cache", default=None, metavar="PATH",
                    help="with --config-trials, trials from a kernel config cache file (what an unmeasured GPU's "
                         "autotune chose, LLAMA_FAST_CONFIG_TABLE=0) instead of --trial-set: all its configs "
                         "together, then each one that differs from the table's alone")
    ap.add_argument("--pad-mb", type=float, default=0.0,
                    help="hold this many MB before the model's caches and graphs are made (shifts where they land)")
    ap.add_argument("--realloc-trials", type=int, default=0, metavar="N",
                    help="the first variant's decode N more times, each after the KV caches (and every buffer "
                         "setup_caches makes) were freed, the allocator emptied and a growing pad allocated")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA GPU here (--device cpu runs the same measurements on the CPU)")
    if args.memory and args.device != "cuda":
        ap.error("--memory reads the CUDA allocator: it needs --device cuda")
    if min(args.batch, args.prompt, args.new, args.runs) < 1 or args.warmup < 0:
        ap.error("--batch, --prompt, --new and --runs must be at least 1, --warmup at least 0")
    if args.breakdown and args.new < 2:
        ap.error("--breakdown needs --new of at least 2 (a decode step after the prefill's token)")
    try:
        parse_dtype(args.dtype)
        keys = args.variants.split(",")
        args.variants = resolve_variants(keys, VARIANTS)
        if args.config_trials:
            args.config_trials = resolve_variants([args.config_trials], VARIANTS)[args.config_trials]
    except ValueError as e:
        ap.error(str(e))
    if args.config_trials is not None and args.config_trials.is_transformers:
        ap.error("--config-trials: a transformers baseline runs none of our kernels")
    check_quantize(ap, args)
    if args.trial_cache:
        if not args.config_trials:
            ap.error("--trial-cache needs --config-trials VARIANT")
        try:
            args.trial_cache = cache_trials(args.trial_cache)
        except (OSError, ValueError, KeyError, TypeError) as e:
            ap.error(f"--trial-cache {args.trial_cache}: {e}")
    return args


def cache_trials(path: str) -> dict[str, dict]:
    """Config trials from a kernel config cache file ({"configs": {"form|n|K": config}}, kernels/tuning.py): the
    table's configs, all the cached ones together, each cached one that differs from the table's alone, the
    table's again. Its ratios say how far an autotuned GPU's step falls short of a measured one's, and which
    choice costs the most, in one process. A key whose form carries the launch's heads ("qkv_rope:32/8|6144|4096",
    configs.heads_form) becomes its plain form's (the override hook is asked by form): the cache of one model."""
    from llama_fast.kernels.configs import h200_config, split_form

    found = json.loads(Path(path).read_text())["configs"]
    if not isinstance(found, dict) or not found:
        raise ValueError("no configs in it")
    plain = {}
    for key, cfg in sorted(found.items()):
        form, n, K = key.split("|")
        plain[f"{split_form(form)[0]}|{n}|{K}"] = cfg
    trials = {"pinned": {}, f"tuned: all {len(plain)}": dict(plain)}
    for key, cfg in plain.items():
        form, n, K = key.split("|")
        if h200_config(form, int(n), int(K)) != cfg:
            trials[f"tuned: {key} {cfg}"] = {key: cfg}
    trials["pinned again"] = {}
    return trials


def main(argv=None):
    args = parse_args(argv)
    if args.cold:
        import tempfile

        cold = tempfile.mkdtemp(prefix="llama_fast_cold_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cold, "inductor")
        os.environ["TRITON_CACHE_DIR"] = os.path.join(cold, "triton")
    from llama_fast.api import limit_cublas_workspace

    limit_cublas_workspace()
    say = logger(args.log)

    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    dtype = parse_dtype(args.dtype)
    w = Workload(args.batch, args.prompt, args.new, args.cache)
    ceil = measure_ceilings(dev, dtype)
    say(f"# {device_name(dev)} torch {torch.__version__} | {args.model} {args.dtype} batch {w.batch} "
        f"prompt {w.prompt_len} new {w.new_tokens} cache {w.cache}")
    say(f"# ceilings: matmul {ceil.matmul_flops / 1e12:.2f} TFLOP/s, copy {ceil.copy_bytes / 1e12:.2f} TB/s")
    variants = args.variants
    if args.chunk:
        variants = {k: v if v.is_transformers else dataclasses.replace(v, prefill_chunk=args.chunk)
                    for k, v in variants.items()}
    rows, outputs = [], {}
    hf_keys = [k for k, v in variants.items() if v.is_transformers]
    ours = [k for k, v in variants.items() if not v.is_transformers]
    if hf_keys or args.check:
        # with --quantize, over the dequantized weights: --check then compares the kernels, not the quantization
        hf = load_hf_model(args.model, dev, dtype, quantize=args.quantize)
        from llama_fast.loading import IdTokenizer
        tok = IdTokenizer(hf.config.vocab_size, None, 0)
        for k in hf_keys:
            t0 = time.time()
            m = measure(hf_runner(hf, tok, variants[k], w), w, args.warmup, args.runs)
            rows.append((k, m))
            outputs[k] = m.output_ids
            say(f"{k}: {m.tok_per_s:.1f} tok/s, mem {m.max_mem_mb:.0f} MB, warm-up {m.warmup_s:.1f}s, hash {m.hash} "
                f"({time.time() - t0:.0f}s)")
        if not args.check:
            del hf
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    cfg, model, tok = load_weights(args.model, dev, dtype, quantize=args.quantize)
    from llama_fast.generate import LlamaFast
    fast = LlamaFast(model, tok, args.model)
    pad = torch.empty(int(args.pad_mb * 1e6), dtype=torch.uint8, device=dev)  # noqa: F841 (held for the run)
    roof = roofline_tok_per_s(cfg, dtype, w, ceil, args.quantize)
    read_mb = weight_bytes(cfg, dtype, include_embedding=False, quantize=args.quantize) / 1e6
    say(f"# roofline {roof:.1f} tok/s, weights read a step {read_mb:.3f} MB"
        + (f" ({args.quantize} weights)" if args.quantize else ""))
    for i, k in enumerate(ours):
        variant = variants[k]
        t0 = time.time()
        prof = None
        if args.profile_warmup and i == 0:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        try:
            m = measure(fast_runner(fast, variant, w), w, args.warmup, args.runs)
            if prof is not None:
                prof.disable()
                profile_report(say, k, prof, args.profile_warmup)
        except Exception as e:  # the other variants still run; the failure is printed
            import traceback

            say(f"{k}: FAILED {type(e).__name__}: {str(e)[-3000:]}")
            traceback.print_exc()
            continue
        rows.append((k, m))
        outputs[k] = m.output_ids
        chk = ""
        if args.check:
            ok, first, gap = teacher_forced_check(hf, m.output_ids, w.prompt_len, tol=0.05)
            chk = f" tf-check {'ok' if ok else 'FAIL at ' + str(first)} max gap {gap:.4f}"
        if cuda:
            floor, pools = memory_budget_bytes(cfg, dtype, w, 0, args.quantize), fast.graph_pool_bytes()
            say(f"{k}: after the runs: allocated {(torch.cuda.memory_allocated() - floor) / 1e6:.1f} MB over the "
                f"floor, our CUDA-graph pools {pools / 1e6:.1f} MB, reserved "
                f"{(torch.cuda.memory_reserved() - floor) / 1e6:.1f} MB over the floor")
            if pools:
                pool_report(say, k)
        if args.breakdown:
            pre, step = prefill_and_step(fast, variant, w, m)
            say(f"{k}: prefill {pre * 1e3:.1f} ms, decode {step * 1e3:.3f} ms/step")
            fast_runner(fast, variant, w)
        if args.compile_times:
            from torch._dynamo.utils import compile_times

            say(f"{k}: compile times (dynamo + inductor, cumulative in this process):\n{compile_times(repr='str')}")
        if args.memory:
            memory_report(say, k, cfg, dtype, w, fast, variant, args.quantize)
        if args.autotune_picks:
            from llama_fast.kernels.gemv import _gemv_fused_kernel
            from llama_fast.kernels.qkv_rope import _gemv_qkv_rope_kernel

            for kern in (_gemv_fused_kernel, _gemv_qkv_rope_kernel):
                for key, cfg_ in getattr(kern, "cache", {}).items():
                    say(f"{k}: autotune {kern.fn.__name__} {key[:4]} -> {cfg_}")
        if args.recompile:
            recompile_report(say, k, fast, variant, w, [int(p) for p in args.recompile.split(",")])
        say(f"{k}: {m.tok_per_s:.1f} tok/s (best {m.tok_per_s_best:.1f}), {100 * m.tok_per_s / roof:.1f}% roofline, "
            f"mem {m.max_mem_mb:.0f} MB, warm-up {m.warmup_s:.1f}s, hash {m.hash}{chk} ({time.time() - t0:.0f}s)")
    if args.config_trials:
        config_trials(say, fast, args.config_trials, w, roof, args.trial_cache or trial_set(args.trial_set))
    if args.realloc_trials and ours:
        realloc_trials(say, fast, variants[ours[0]], w, roof, args.realloc_trials)
    for line in results_table(rows, roof):
        say(line)
    return 0


def results_table(rows: list, roof: float) -> list[str]:
    """The markdown table of (variant key, Measurement) rows, in run order."""
    lines = ["| variant | tok/s | % roofline | max MB | warm-up s | hash |", "|---|---|---|---|---|---|"]
    for k, m in rows:
        lines.append(f"| {k} | {m.tok_per_s:.1f} | {100 * m.tok_per_s / roof:.1f} | {m.max_mem_mb:.0f} | "
                     f"{m.warmup_s:.1f} | {m.hash} |")
    return lines


def _cfg(bn, bk, stages, warps=4):
    return {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages}


def _attn(chunk: int, warps: int) -> dict:
    """A trial of the decode attention's config: cache slots a program, warps."""
    return {"attention": {"CHUNK": chunk, "num_warps": warps}}


def _span(chunk: int, warps: int, waves: int, stages: int) -> dict:
    """A trial of the tensor-core GQA attention's span form (attention.span_config): tile slots, warps, programs
    an SM, pipeline stages."""
    return {"attention": {"CHUNK": chunk, "num_warps": warps, "WAVES": waves, "STAGES": stages}}


# Trial sets of --config-trials: trial name -> {form or form@K: config} (bench_util.trial_lookup; forms as in
# llama_fast/kernels/configs.py; at Llama-7B wo is residual@4096, w2 residual@11008). Each starts and ends with
# the pinned configs, so the drift inside one process shows. The numbers are those docs/PERF.md cites; sets 3
# and 6 tried kernel options that were removed (docs/PERF.md, tried and rejected).
# Sets 7 and 11 tried kernel options of the quantized GEMVs that were removed too (docs/PERF.md).

# set 1: each form's neighbouring configs and attention tiles (adopted: eager attention at 128/4)
CONFIG_TRIALS = {
    "pinned": {},
    "residual s4": {"residual": _cfg(8, 512, 4)},
    "residual BK256 s4": {"residual": _cfg(8, 256, 4)},
    "residual BN16": {"residual": _cfg(16, 512, 3)},
    "wo BN16 BK256": {"residual@4096": _cfg(16, 256, 3)},
    "swiglu s3": {"swiglu": _cfg(8, 512, 3)},
    "swiglu BK256 s3": {"swiglu": _cfg(8, 256, 3)},
    "qkv BN32 BK512": {"qkv_rope": _cfg(32, 512, 3)},
    "qkv s4": {"qkv_rope": _cfg(16, 256, 4)},
    "attn 32/2": _attn(32, 2),
    "attn 64/4": _attn(64, 4),
    "attn 128/4": _attn(128, 4),
    "pinned again": {},
}
# set 2, after attention moved to 128/4: the wo GEMV (the least efficient), the head, bigger tiles (nothing adopted)
CONFIG_TRIALS_2 = {
    "pinned": {},
    "wo warps 2": {"residual@4096": _cfg(8, 512, 3, warps=2)},
    "wo BN16 warps 8": {"residual@4096": _cfg(16, 512, 3, warps=8)},
    "residual BK1024 s2": {"residual": _cfg(8, 1024, 2)},
    "swiglu BN16 s2": {"swiglu": _cfg(16, 512, 2)},
    "head BN32": {"rmsnorm": _cfg(32, 512, 3)},
    "head BN8": {"rmsnorm": _cfg(8, 512, 3)},
    "attn 128/8": _attn(128, 8),
    "attn 256/8": _attn(256, 8),
    "residual s4 + swiglu s3 + qkv s4": {"residual": _cfg(8, 512, 4), "swiglu": _cfg(8, 512, 3),
                                         "qkv_rope": _cfg(16, 256, 4)},
    "pinned again": {},
}

# set 4: the residual GEMVs at BK 1024 with 8 warps, which fused_bench.py --sweep-configs put ahead for wo and w2
# (adopted: "pinned" is now the same as "residual BK1024 w8")
CONFIG_TRIALS_4 = {
    "pinned": {},
    "residual BK1024 w8": {"residual": _cfg(8, 1024, 3, warps=8)},
    "w2 BK1024 w8": {"residual@11008": _cfg(8, 1024, 3, warps=8)},
    "wo BK1024 w8": {"residual@4096": _cfg(8, 1024, 3, warps=8)},
    "residual BN16 BK1024 w8": {"residual": _cfg(16, 1024, 3, warps=8)},
    "swiglu w8": {"swiglu": _cfg(8, 512, 2, warps=8)},
    "pinned again": {},
    "residual BK1024 w8 again": {"residual": _cfg(8, 1024, 3, warps=8)},
}

# set 5, on fused-gemv-early: attention tiles under the wqkv GEMV's early trigger (the attention's programs then
# wait on the SMs, holding their K/V tiles in registers, while the GEMV's last wave runs; pinned 128/4 kept)
CONFIG_TRIALS_5 = {
    "pinned": {},
    "attn 64/2": _attn(64, 2),
    "attn 64/4": _attn(64, 4),
    "attn 128/8": _attn(128, 8),
    "pinned again": {},
}


def _gemm(bn: int, bk: int, stages: int, warps: int = 4, per_sm: int = 1) -> dict:
    """A small-M GEMM config (kernels/gemm.py: PER_SM, the programs per SM its K split aims for)."""
    return {**_cfg(bn, bk, stages, warps=warps), "PER_SM": per_sm}


# set 9, on fused-gemm-kernels at batch 8 / 16: the small-M GEMM's 16-row tiles around the pins, per form (plain:
# wo and w2; rmsnorm: wqkv with RoPE and the head; swiglu: w13). "pinned copy" names the pins themselves.
CONFIG_TRIALS_9 = {
    "pinned": {},
    "pinned copy": {"gemm16_plain": _gemm(64, 128, 4), "gemm16_rmsnorm": _gemm(32, 256, 3),
                    "gemm16_swiglu": _gemm(64, 64, 4)},
    "plain BN32 BK256 s3": {"gemm16_plain": _gemm(32, 256, 3)},
    "plain PER_SM 2": {"gemm16_plain": _gemm(64, 128, 4, per_sm=2)},
    "plain BN128 w8 s3": {"gemm16_plain": _gemm(128, 128, 3, warps=8)},
    "rmsnorm BN64 BK128 s4": {"gemm16_rmsnorm": _gemm(64, 128, 4)},
    "rmsnorm BN16 BK256 s4": {"gemm16_rmsnorm": _gemm(16, 256, 4)},
    "swiglu BN32 BK128 s3": {"gemm16_swiglu": _gemm(32, 128, 3)},
    "swiglu BN64 BK128 s3": {"gemm16_swiglu": _gemm(64, 128, 3)},
    "pinned again": {},
}


def _int4_all(bk: int, stages: int, warps: int = 4) -> dict:
    """The int4 GEMV forms of the batch-1 step at one K tile (qkv+RoPE at 16 rows, the others at 8)."""
    return {f: _cfg(16 if f == "qkv_rope_int4" else 8, bk, stages, warps=warps)
            for f in ("qkv_rope_int4", "residual_int4", "swiglu_int4", "rmsnorm_int4")}


# set 10, on fused-gemv-early with --quantize int4: K tiles shorter than the pinned whole row (4096), so that the
# loop has more than one tile and Triton pipelines its loads (num_stages deep), against the one-tile pins
CONFIG_TRIALS_10 = {
    "pinned": {},
    "BK2048 s3": _int4_all(2048, 3),
    "BK2048 s2": _int4_all(2048, 2),
    "BK2048 w2 s3": _int4_all(2048, 3, warps=2),
    "BK1024 w2 s3": _int4_all(1024, 3, warps=2),
    "residual BK2048 w2 s3": {"residual_int4": _cfg(8, 2048, 3, warps=2)},
    "pinned again": {},
}

# set 12, on fused-gemv-early with --quantize int4: more rows a program (the x work of a tile shared by more rows:
# fewer instructions a weight, compiled offline, at fewer programs an SM)
CONFIG_TRIALS_12 = {
    "pinned": {},
    "residual BN16": {"residual_int4": _cfg(16, 4096, 3)},
    "residual BN16 w8": {"residual_int4": _cfg(16, 4096, 3, warps=8)},
    "head BN16 w8": {"rmsnorm_int4": _cfg(16, 4096, 3, warps=8)},
    "residual + head BN16 w8": {"residual_int4": _cfg(16, 4096, 3, warps=8),
                                "rmsnorm_int4": _cfg(16, 4096, 3, warps=8)},
    "qkv_rope BN32 w8": {"qkv_rope_int4": _cfg(32, 4096, 3, warps=8)},
    "swiglu BN16 w8": {"swiglu_int4": _cfg(16, 4096, 3, warps=8)},
    "pinned again": {},
}


def _persist(bn: int, per_sm: int = 3, warps: int = 4, stages: int = 3, maxnreg: int | None = None) -> dict:
    """A persistent quantized GEMV (one K tile of 4096, per_sm programs an SM walking the row blocks), with
    maxnreg: at most that many registers a thread."""
    return {**_cfg(bn, 4096, stages, warps=warps), "PERSIST": per_sm, **({"maxnreg": maxnreg} if maxnreg else {})}


# set 13, on fused-gemv-early with --quantize int4: the persistent GEMV forms (x prepared once a program, the next
# row block's tile loaded before this one's products) for the one-tile shapes: the head, wo, w13
CONFIG_TRIALS_13 = {
    "pinned": {},
    "head P3": {"rmsnorm_int4": _persist(8)},
    "head P4": {"rmsnorm_int4": _persist(8, 4)},
    "wo P3": {"residual_int4@4096": _persist(8)},
    "w13 BN4 P3": {"swiglu_int4": _persist(4)},
    "w13 BN8 P2": {"swiglu_int4": _persist(8, 2)},
    "head P3 + w13 BN4 P3": {"rmsnorm_int4": _persist(8), "swiglu_int4": _persist(4)},
    "head P3 + w13 BN8 P2": {"rmsnorm_int4": _persist(8), "swiglu_int4": _persist(8, 2)},
    "pinned again": {},
}

# set 14, on fused-gemv-early with --quantize int8: the persistent forms at one K tile of 4096 (16 bytes a thread and
# row at 8 warps, 32 at 4)
CONFIG_TRIALS_14 = {
    "pinned": {},
    "head P2 w8": {"rmsnorm_int8": _persist(8, 2, warps=8)},
    "head w4 P3": {"rmsnorm_int8": _persist(8, 3)},
    "w13 BN4 P2 w8": {"swiglu_int8": _persist(4, 2, warps=8)},
    "wo P2 w8": {"residual_int8@4096": _persist(8, 2, warps=8)},
    "head + w13 + wo": {"rmsnorm_int8": _persist(8, 2, warps=8), "swiglu_int8": _persist(4, 2, warps=8),
                        "residual_int8@4096": _persist(8, 2, warps=8)},
    "pinned again": {},
}

# set 15, on fused-gemv-early with --quantize int4: the qkv+RoPE GEMV (wqkv) as persistent programs
CONFIG_TRIALS_15 = {
    "pinned": {},
    "qkv BN16 P2": {"qkv_rope_int4": _persist(16, 2)},
    "qkv BN8 P3": {"qkv_rope_int4": _persist(8, 3)},
    "qkv BN8 P3 + head P3": {"qkv_rope_int4": _persist(8, 3), "rmsnorm_int4": _persist(8, 3)},
    "pinned again": {},
}

# set 16, on fused-gemv-early with --quantize int4 (wqkv and w13 persistent since f7ad054): the head (rmsnorm form);
# its first trial again after the pins, as the noise between the two showed as large as the gain
CONFIG_TRIALS_16 = {
    "pinned": {},
    "head P3": {"rmsnorm_int4": _persist(8)},
    "head P4": {"rmsnorm_int4": _persist(8, 4)},
    "head BN16 P2": {"rmsnorm_int4": _persist(16, 2)},
    "pinned again": {},
    "head P3 again": {"rmsnorm_int4": _persist(8)},
}

# set 17, on fused-gemv-early with --quantize int4: the persistent wqkv and w13 at fewer programs than fit an SM,
# so that the next kernel's programs (launched early: ForwardOptions.pdl_gemv_early) find room to load their first
# tiles while these run
CONFIG_TRIALS_17 = {
    "pinned": {},
    "w13 P1": {"swiglu_int4": _persist(8, 1)},
    "qkv P1": {"qkv_rope_int4": _persist(16, 1)},
    "w13 BN4 P2": {"swiglu_int4": _persist(4, 2)},
    "qkv BN8 P2": {"qkv_rope_int4": _persist(8, 2)},
    "w13 BN4 P2 + qkv BN8 P2": {"swiglu_int4": _persist(4, 2), "qkv_rope_int4": _persist(8, 2)},
    "pinned again": {},
}

# set 18, on fused-gemv-early with --quantize int4, after the subnormal dequantization (fewer instructions a weight):
# persistent forms at 8 warps (half the registers a thread: twice the warps an SM) and the head persistent again
CONFIG_TRIALS_18 = {
    "pinned": {},
    "w13 P2 w8": {"swiglu_int4": _persist(8, 2, warps=8)},
    "qkv P1 w8": {"qkv_rope_int4": _persist(16, 1, warps=8)},
    "head P3": {"rmsnorm_int4": _persist(8, 3)},
    "head BN16 P2 w8": {"rmsnorm_int4": _persist(16, 2, warps=8)},
    "wo BN16 P2 w8": {"residual_int4@4096": _persist(16, 2, warps=8)},
    "pinned again": {},
}

# set 21, on fused-gemv-early with --quantize int4 (w13 at 8 warps since set 18): the qkv+RoPE GEMV at 16 warps an
# SM as well (8 warps held to 128 registers, or 8 rows at 4 warps: 127 registers, 3.4 instructions a weight either
# way, compiled offline), w2 at 8 rows over 4 warps (4 programs an SM), the head persistent at 4 an SM
CONFIG_TRIALS_21 = {
    "pinned": {},
    "qkv BN16 w8 P2 r128": {"qkv_rope_int4": _persist(16, 2, warps=8, maxnreg=128)},
    "qkv BN8 P3": {"qkv_rope_int4": _persist(8, 3)},
    "qkv BN8 P4": {"qkv_rope_int4": _persist(8, 4)},
    "w2 BN8 w4": {"residual_int4@11008": _cfg(8, 4096, 3)},
    "head P4": {"rmsnorm_int4": _persist(8, 4)},
    "pinned again": {},
}

# set 22, on fused-gemv-early with --quantize int4 (wqkv at 8 rows, 4 an SM, and the head persistent since set
# 21): w13 at 4 rows, 4 an SM (118 registers, 16 warps an SM at 4 warps each, compiled offline); the attention's
# chunk and warps again (the GEMVs around it have changed since set 2 chose 128 / 4 for the fp16 step)
CONFIG_TRIALS_22 = {
    "pinned": {},
    "w13 BN4 P4": {"swiglu_int4": _persist(4, 4)},
    "attn 64/2": _attn(64, 2),
    "attn 32/2": _attn(32, 2),
    "attn 64/4": _attn(64, 4),
    "attn 256/8": _attn(256, 8),
    "pinned again": {},
}

# set 23, on fused-gemv-early with --quantize int8: the qkv+RoPE GEMV (19.9 us alone against 15.6 for the plain
# GEMV at wqkv's shape) at 4 warps, 3-4 programs an SM (compiled offline: 125-168 registers)
CONFIG_TRIALS_23 = {
    "pinned": {},
    "qkv BN16 BK1024": {"qkv_rope_int8": _cfg(16, 1024, 3)},
    "qkv BN8 BK2048": {"qkv_rope_int8": _cfg(8, 2048, 3)},
    "qkv BN16 BK2048 w4": {"qkv_rope_int8": _cfg(16, 2048, 3)},
    "pinned again": {},
}

# set 24, on fused-gemv-early with --quantize int4: w2 (K 11008) at 16 rows over 4 warps, half the K tile, 4 an SM
# (127 registers)
CONFIG_TRIALS_24 = {
    "pinned": {},
    "w2 BN16 BK2048 w4": {"residual_int4@11008": _cfg(16, 2048, 3)},
    "wo BN16 BK2048 w4": {"residual_int4@4096": _cfg(16, 2048, 3)},
    "pinned again": {},
}

# set 25, on fused-gemv-early with --quantize int8 (wqkv at 16 rows over 4 warps since set 23): the other forms at
# 4 warps, 3 an SM (168 registers, fewer instructions a weight: residual 3.4 against 3.8, SwiGLU 3.7 against 3.8,
# the head 3.8 against 4.4, compiled offline)
CONFIG_TRIALS_25 = {
    "pinned": {},
    "wo w2 BN16": {"residual_int8": _cfg(16, 2048, 3)},
    "w13 BK2048": {"swiglu_int8": _cfg(8, 2048, 2)},
    "head BN16": {"rmsnorm_int8": _cfg(16, 2048, 3)},
    "all three": {"residual_int8": _cfg(16, 2048, 3), "swiglu_int8": _cfg(8, 2048, 2),
                  "rmsnorm_int8": _cfg(16, 2048, 3)},
    "pinned again": {},
}

# set 26, on fused-gemv-early with --quantize int4 (w13, wqkv and the head at 4 an SM since set 22): wo persistent
# at 3 an SM (141 registers), w2 held to 80 registers (3 an SM, 112 B of spills), w13 and wqkv at 5 an SM held to
# 96 registers (56 / 104 B of spills; compiled offline)
CONFIG_TRIALS_26 = {
    "pinned": {},
    "wo BN8 P3": {"residual_int4@4096": _persist(8, 3)},
    "w2 r80": {"residual_int4@11008": {**_cfg(16, 4096, 3, warps=8), "maxnreg": 80}},
    "w13 P5 r96": {"swiglu_int4": _persist(4, 5, maxnreg=96)},
    "qkv P5 r96": {"qkv_rope_int4": _persist(8, 5, maxnreg=96)},
    "pinned again": {},
}

def _gemm_quant(fmt: str, plain: dict | None = None, rmsnorm: dict | None = None, swiglu: dict | None = None) -> dict:
    """A trial of the small-M GEMM's 16-row quantized forms of fmt (int8 / int4): the configs given."""
    forms = {"plain": plain, "rmsnorm": rmsnorm, "swiglu": swiglu}
    return {f"gemm16_{kind}_{fmt}": cfg for kind, cfg in forms.items() if cfg is not None}


def _gemm_quant_set(fmt: str) -> dict:
    """Sets 29 (int4) and 30 (int8), on fused-gemm-kernels at batch 8 with --quantize fmt, after the weights became
    fp16 halves in place (fewer instructions a weight: the x tile's share grows): wider output tiles (x prepared
    for twice the rows), a shallower K split, deeper pipelines. (int8 at batch > 1 runs the compiled step, whose
    configs are fixed at its first trace: set 30 moves them only where small_m_kernels_apply takes int8, as in
    docs/PERF.md's run.)"""
    wide, wide8 = _gemm(128, 128, 3, per_sm=4), _gemm(128, 128, 3, warps=8, per_sm=4)
    return {
        "pinned": {},
        "plain BN128 P4": _gemm_quant(fmt, plain=wide),
        "rmsnorm BN128 P4": _gemm_quant(fmt, rmsnorm=wide),
        "swiglu BN128 P2": _gemm_quant(fmt, swiglu=_gemm(128, 128, 3, per_sm=2)),
        "all BN128 w8 P4": _gemm_quant(fmt, wide8, wide8, _gemm(128, 128, 3, warps=8, per_sm=2)),
        "plain rmsnorm P4": _gemm_quant(fmt, _gemm(64, 128, 3, per_sm=4), _gemm(64, 128, 3, per_sm=4)),
        "all s4": _gemm_quant(fmt, _gemm(64, 128, 4, per_sm=8), _gemm(64, 128, 4, per_sm=8),
                              _gemm(64, 128, 4, per_sm=4)),
        "pinned again": {},
    }


# set 33, on fused-gemm-kernels at batch 4-16 with --quantize int8 (the kernels-only step, which int8 takes at batch
# 3-16 since small_m_kernels_apply stopped excluding it there): the pipeline's depth and K tile around the pins
# (64-wide K tiles, 6 stages), the earlier pins (128-wide, 3 stages), int4's 128-row tiles, the K split's aim
def _q8(plain: dict | None = None, rmsnorm: dict | None = None, swiglu: dict | None = None) -> dict:
    return _gemm_quant("int8", plain, rmsnorm, swiglu)


CONFIG_TRIALS_33 = {
    "pinned": {},
    "BK128 s3 (the earlier pins)": _q8(_gemm(64, 128, 3, per_sm=8), _gemm(64, 128, 3, per_sm=8),
                                       _gemm(64, 128, 3, per_sm=4)),
    "BK128 s4": _q8(_gemm(64, 128, 4, per_sm=8), _gemm(64, 128, 4, per_sm=8), _gemm(64, 128, 4, per_sm=4)),
    "BK64 s5": _q8(_gemm(64, 64, 5, per_sm=8), _gemm(64, 64, 5, per_sm=8), _gemm(64, 64, 5, per_sm=4)),
    "BK64 s7": _q8(_gemm(64, 64, 7, per_sm=8), _gemm(64, 64, 7, per_sm=8), _gemm(64, 64, 7, per_sm=4)),
    "BK64 P12/12/6": _q8(_gemm(64, 64, 6, per_sm=12), _gemm(64, 64, 6, per_sm=12), _gemm(64, 64, 6, per_sm=6)),
    "BK64 P6/6/3": _q8(_gemm(64, 64, 6, per_sm=6), _gemm(64, 64, 6, per_sm=6), _gemm(64, 64, 6, per_sm=3)),
    "swiglu BK128 s3": _q8(swiglu=_gemm(64, 128, 3, per_sm=4)),
    "int4's tiles, BK128 s4": _q8(_gemm(128, 128, 4, warps=8, per_sm=4), _gemm(128, 128, 4, warps=8, per_sm=4),
                                  _gemm(128, 128, 4, warps=8, per_sm=2)),
    "int4's tiles, BK64 s6": _q8(_gemm(128, 64, 6, warps=8, per_sm=4), _gemm(128, 64, 6, warps=8, per_sm=4),
                                 _gemm(128, 64, 6, warps=8, per_sm=2)),
    "pinned again": {},
}


# set 34, on fused-gemm-kernels at batch 8 with --model random:llama3-8b --dtype bf16: the small-M GEMM per
# projection at Llama-3-8B's shapes ("form|n|K": wqkv 6144 x 4096, w13 14336 x 4096, wo 4096 x 4096, w2 4096 x
# 14336, the head 128256 x 4096), whose output tiles fill a wave of 132 SMs unevenly at the Llama-7B pins (wqkv 192
# programs, w13 224), and the GQA attention's chunk and warps
_L3_QKV, _L3_W13, _L3_WO, _L3_W2, _L3_HEAD = ("gemm16_rmsnorm|6144|4096", "gemm16_swiglu|14336|4096",
                                              "gemm16_plain|4096|4096", "gemm16_plain|4096|14336",
                                              "gemm16_rmsnorm|128256|4096")
CONFIG_TRIALS_34 = {
    "pinned": {},
    "qkv P3": {_L3_QKV: _gemm(32, 256, 3, per_sm=3)},
    "qkv BN64 BK128 s4 P2": {_L3_QKV: _gemm(64, 128, 4, per_sm=2)},
    "w13 P4": {_L3_W13: _gemm(64, 64, 4, per_sm=4)},
    "w13 BN32 BK128 s3": {_L3_W13: _gemm(32, 128, 3)},
    "w13 BK64 s5": {_L3_W13: _gemm(64, 64, 5)},
    "wo P2": {_L3_WO: _gemm(64, 128, 4, per_sm=2)},
    "w2 P2": {_L3_W2: _gemm(64, 128, 4, per_sm=2)},
    "w2 BK64 s6": {_L3_W2: _gemm(64, 64, 6)},
    "head BN64 BK128 s4": {_L3_HEAD: _gemm(64, 128, 4)},
    "head BN128 BK128 s3 w8": {_L3_HEAD: _gemm(128, 128, 3, warps=8)},
    "attention 128/4": _attn(128, 4),
    "attention 64/4": _attn(64, 4),
    "attention 32/2": _attn(32, 2),
    "pinned again": {},
}
# set 35, on fused-gemm-kernels at batch 8 / 16 with Llama-7B fp16: deeper pipelines of shorter K tiles (what
# made int8 match fp16, set 33) and w13's 172 output tiles (a wave and a third of 132 SMs) split over K
CONFIG_TRIALS_35 = {
    "pinned": {},
    "plain BK64 s6": {"gemm16_plain": _gemm(64, 64, 6)},
    "plain BK64 s6 P2": {"gemm16_plain": _gemm(64, 64, 6, per_sm=2)},
    "rmsnorm BK128 s5": {"gemm16_rmsnorm": _gemm(32, 128, 5)},
    "swiglu s5": {"gemm16_swiglu": _gemm(64, 64, 5)},
    "swiglu P2": {"gemm16_swiglu": _gemm(64, 64, 4, per_sm=2)},
    "swiglu P4": {"gemm16_swiglu": _gemm(64, 64, 4, per_sm=4)},
    "all BK64 s5-6": {"gemm16_plain": _gemm(64, 64, 6), "gemm16_rmsnorm": _gemm(32, 128, 5),
                      "gemm16_swiglu": _gemm(64, 64, 5)},
    "pinned again": {},
}


# set 36, on fused-gemm-kernels at batch 2 / 16 with --model random:llama3-8b --dtype bf16, after set 34's two
# changes (the RMSNorm form's PER_SM 3, the GQA attention's eager 128 / 4): each taken back, both, and longer
# attention tiles over more warps
CONFIG_TRIALS_36 = {
    "pinned": {},
    "qkv P1 (the earlier pin)": {_L3_QKV: _gemm(32, 256, 3)},
    "attention 64/2 (the compiled config)": _attn(64, 2),
    "both earlier": {_L3_QKV: _gemm(32, 256, 3), **_attn(64, 2)},
    "attention 128/8": _attn(128, 8),
    "attention 256/8": _attn(256, 8),
    "pinned again": {},
}


# set 37, on fused-gemm-kernels at batch 8 with --model random:llama3-8b --dtype bf16, after set 34: wqkv's K split
# deeper on 128-wide K tiles, w13 at 128-wide output tiles over 8 warps, the head one stage deeper
CONFIG_TRIALS_37 = {
    "pinned": {},
    "qkv BK128 s4 P3": {_L3_QKV: _gemm(32, 128, 4, per_sm=3)},
    "qkv BK128 s4 P4": {_L3_QKV: _gemm(32, 128, 4, per_sm=4)},
    "w13 BN128 BK64 w8 s2": {_L3_W13: _gemm(128, 64, 2, warps=8)},
    "head s4": {_L3_HEAD: _gemm(32, 256, 4)},
    "pinned again": {},
}


# set 38, on fused-gemm-kernels at batch 8 with Llama-7B fp16: the multi-head attention's eager launch in the step
# at the tiles that won for the GQA kernel (set 34), against the compiled 64 / 2 it takes (alone, scripts/
# attn_bench.py, 64 / 2 was the fastest at batch 8)
CONFIG_TRIALS_38 = {
    "pinned": {},
    "attention 128/4": _attn(128, 4),
    "attention 64/4": _attn(64, 4),
    "attention 32/2": _attn(32, 2),
    "pinned again": {},
}


# set 39, on fused-gemm-kernels at batch 2-16 with --model random:llama3-8b --dtype bf16: the tensor-core GQA
# attention's span form (an online softmax over a span of tiles a program, about WAVES programs an SM, the tiles
# pipelined) against its one-chunk launch (128 / 4)
CONFIG_TRIALS_39 = {
    "pinned": {},
    "span 64/4 waves 2 stages 2": _span(64, 4, 2, 2),
    "span 64/4 waves 2 stages 3": _span(64, 4, 2, 3),
    "span 64/4 waves 3 stages 3": _span(64, 4, 3, 3),
    "span 64/4 waves 1 stages 3": _span(64, 4, 1, 3),
    "span 32/4 waves 2 stages 3": _span(32, 4, 2, 3),
    "span 128/4 waves 2 stages 2": _span(128, 4, 2, 2),
    "pinned again": {},
}


# set 40, on fused-gemm-kernels at batch 4-16 with --model random:llama3-8b --dtype bf16, after the span form became
# the GQA attention's eager config where its spans hold two tiles or more (configs.ATTN_GQA_SPAN_CONFIG): taken back
CONFIG_TRIALS_40 = {
    "pinned": {},
    "one-chunk attention 128/4 (before the span form)": _attn(128, 4),
    "pinned again": {},
}


# set 41, on fused-gemm-kernels at batch 8 with Llama-7B fp16: the span form for a multi-head model (groups of one
# query head on the tensor cores, fewer partials for the combine) against its one-chunk 64 / 2
CONFIG_TRIALS_41 = {
    "pinned": {},
    "span 64/4 waves 4 stages 2": _span(64, 4, 4, 2),
    "span 64/4 waves 8 stages 2": _span(64, 4, 8, 2),
    "span 64/4 waves 12 stages 2": _span(64, 4, 12, 2),
    "span 64/4 waves 8 stages 3": _span(64, 4, 8, 3),
    "span 128/4 waves 8 stages 2": _span(128, 4, 8, 2),
    "pinned again": {},
}


# sets 31 (int4) and 32 (int8), on fused-gemm-kernels at batch 2-4 with --quantize fmt: the rows GEMV
# (kernels/gemv_rows.py) under configs of its own ("rows_<form>", configs.rows_config) instead of the one-row form's:
# each program holds every row's accumulators and x tiles: fewer weight rows or programs an SM, more warps
CONFIG_TRIALS_31 = {
    "pinned": {},
    "wo w2 BN8 w8": {"rows_residual_int4": _cfg(8, 4096, 3, warps=8)},
    "wo w2 BN8 w4": {"rows_residual_int4": _cfg(8, 4096, 3)},
    "w13 P2": {"rows_swiglu_int4": _persist(4, 2)},
    "w13 P3": {"rows_swiglu_int4": _persist(4, 3)},
    "qkv P2": {"rows_qkv_rope_int4": _persist(8, 2)},
    "qkv P3": {"rows_qkv_rope_int4": _persist(8, 3)},
    "head P2": {"rows_rmsnorm_int4": _persist(8, 2)},
    "pinned again": {},
}
CONFIG_TRIALS_32 = {
    "pinned": {},
    "qkv BN8 BK2048": {"rows_qkv_rope_int8": _cfg(8, 2048, 3)},
    "qkv BN8 BK1024": {"rows_qkv_rope_int8": _cfg(8, 1024, 3)},
    "wo w2 BK1024": {"rows_residual_int8": _cfg(8, 1024, 3)},
    "wo w2 BK1024 w8": {"rows_residual_int8": _cfg(8, 1024, 3, warps=8)},
    "w13 BN4 BK1024": {"rows_swiglu_int8": _cfg(4, 1024, 2)},
    "head BK1024": {"rows_rmsnorm_int8": _cfg(8, 1024, 3)},
    "pinned again": {},
}

# trial set number -> its trials
TRIAL_SETS = {1: CONFIG_TRIALS, 2: CONFIG_TRIALS_2, 4: CONFIG_TRIALS_4, 5: CONFIG_TRIALS_5, 9: CONFIG_TRIALS_9,
              10: CONFIG_TRIALS_10, 12: CONFIG_TRIALS_12, 13: CONFIG_TRIALS_13, 14: CONFIG_TRIALS_14,
              15: CONFIG_TRIALS_15, 16: CONFIG_TRIALS_16, 17: CONFIG_TRIALS_17,
              18: CONFIG_TRIALS_18, 21: CONFIG_TRIALS_21,
              22: CONFIG_TRIALS_22, 23: CONFIG_TRIALS_23, 24: CONFIG_TRIALS_24,
              25: CONFIG_TRIALS_25, 26: CONFIG_TRIALS_26, 29: _gemm_quant_set("int4"), 30: _gemm_quant_set("int8"),
              31: CONFIG_TRIALS_31, 32: CONFIG_TRIALS_32, 33: CONFIG_TRIALS_33,
              34: CONFIG_TRIALS_34, 35: CONFIG_TRIALS_35, 36: CONFIG_TRIALS_36,
              37: CONFIG_TRIALS_37, 38: CONFIG_TRIALS_38, 39: CONFIG_TRIALS_39,
              40: CONFIG_TRIALS_40, 41: CONFIG_TRIALS_41}


def trial_set(number: int) -> dict[str, dict]:
    return TRIAL_SETS[number]


def prefill_and_step(fast, variant, w, m):
    """(prefill s, decode s/step) of the measured run m: a 1-new-token run (best of 5) gives the prefill, the
    rest of m's best time is divided over its decode steps."""
    w1 = Workload(w.batch, w.prompt_len, 1, w.cache)
    pre = min(measure(fast_runner(fast, variant, w1), w1, 1, 5).times)
    return pre, (min(m.times) - pre) / (w.new_tokens - 1)


def pool_report(say, k):
    """The private (CUDA-graph) pools' segments: size, and the sizes of the blocks in them."""
    for seg in torch.cuda.memory_snapshot():
        pool = tuple(seg.get("segment_pool_id", (0, 0)))
        if pool == (0, 0):
            continue
        blocks = sorted(((b["size"], b["state"]) for b in seg.get("blocks", [])), reverse=True)
        say(f"{k}: pool {pool} segment {seg['total_size'] / 1e6:.1f} MB, allocated {seg['allocated_size'] / 1e6:.1f} "
            f"MB; blocks (MB, state): " + ", ".join(f"{sz / 1e6:.1f} {st[:6]}" for sz, st in blocks[:8]))


def config_trials(say, fast, variant, w, roof, trials):
    """Decode ms/step of one variant under each trial's config overrides (graphs recaptured per trial)."""
    for name, table in trials.items():
        try:
            with config_override(table):
                m = measure(fast_runner(fast, variant, w), w, 1, 3)
                _, step = prefill_and_step(fast, variant, w, m)
        except Exception as e:  # a config that does not compile or fit: say so and go on
            say(f"trial {name}: FAILED {type(e).__name__}: {str(e)[:300]}")
            continue
        say(f"trial {name}: decode {step * 1e3:.3f} ms/step, {m.tok_per_s:.1f} tok/s "
            f"({100 * m.tok_per_s / roof:.1f}% roofline), hash {m.hash}")


def realloc_trials(say, fast, variant, w, roof, n):
    """Decode ms/step after the model's per-(batch, cache) buffers (KV caches, counters, masks, RoPE tables) are
    made again at new addresses, n times in one process (graphs recaptured each time): does a process's decode
    speed follow where its buffers land?"""
    from torch._dynamo.utils import counters

    model, pads = fast.model, []
    for i in range(n + 1):
        if i:
            for layer in model.layers:
                layer.attention.kv_cache = None
            model.batch_size = 0  # setup_caches allocates anew on the next generate
            torch.cuda.empty_cache()
            pads.append(torch.empty(int(i * 37e6), dtype=torch.uint8, device=model.output.weight.device))
        m = measure(fast_runner(fast, variant, w), w, 1, 3)
        _, step = prefill_and_step(fast, variant, w, m)
        c = model.layers[0].attention.kv_cache
        say(f"buffers {'as made' if not i else f'remade {i}'} (compiled graphs so far: "
            f"{counters['stats']['unique_graphs']}): decode {step * 1e3:.3f} ms/step, "
            f"{m.tok_per_s:.1f} tok/s ({100 * m.tok_per_s / roof:.1f}% roofline); layer 0 k_cache "
            f"{c.k_cache.data_ptr():#x} v_cache {c.v_cache.data_ptr():#x}")


def profile_report(say, k, prof, path):
    """Dump the warm-up profile and print where its time went (cumulative, then own time)."""
    import io
    import pstats

    prof.dump_stats(path)
    for order in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(order).print_stats(35)
        say(f"{k}: warm-up profile by {order}:\n{buf.getvalue()[-9000:]}")


def memory_report(say, k, cfg, dtype, w, fast, variant, quantize=None):
    """Where the peak over the weights + KV-cache floor comes from: resident memory after warm-up, the peaks
    of a prefill-only and of a whole run, and (from an allocator trace of a fresh warm-up + run) the blocks
    alive at the peak, grouped by the llama_fast / torch line that allocated them."""
    floor = memory_budget_bytes(cfg, dtype, w, 0, quantize)
    extra = torch.cuda.memory_allocated() - sum(
        t.numel() * t.element_size() for t in list(fast.model.parameters()) + list(fast.model.buffers()))
    say(f"{k}: memory MB floor {floor / 1e6:.0f}; allocated beyond our params and buffers (KV cache included; "
        f"counts any transformers model) {extra / 1e6:.1f}")
    peaks = {}
    for name, n in (("prefill", 1), ("run", w.new_tokens)):
        wl = Workload(w.batch, w.prompt_len, n, w.cache)
        run = fast_runner(fast, variant, wl)
        ids = wl.prompt()
        run(ids)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run(ids)
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() - base
    say(f"{k}: peak above resident: prefill-only run +{peaks['prefill'] / 1e6:.1f} MB, whole run "
        f"+{peaks['run'] / 1e6:.1f} MB")
    before = torch.cuda.memory_allocated()
    torch._C._cuda_clearCublasWorkspaces()
    say(f"{k}: cuBLAS workspaces held {(before - torch.cuda.memory_allocated()) / 1e6:.1f} MB")
    # allocator trace of a fresh configure (graphs dropped) + warm-up + timed-like run
    fast.configure(options=variant.options, compile=variant.compile, prefill_chunk=variant.prefill_chunk)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.memory._record_memory_history(max_entries=200000, stacks="python")
    run = fast_runner(fast, variant, w)
    ids = w.prompt()
    run(ids)
    run(ids)
    torch.cuda.synchronize()
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    live, total, best, at_best = {}, 0, 0, {}
    for ev in snap["device_traces"][torch.cuda.current_device()]:
        a = ev["action"]
        if a == "alloc":
            live[ev["addr"]] = ev
            total += ev["size"]
            if total > best:
                best, at_best = total, dict(live)
        elif a in ("free_requested", "free_completed") and ev["addr"] in live:
            total -= live.pop(ev["addr"])["size"]
    groups = {}
    for ev in at_best.values():
        frames = ev.get("frames", [])
        ours = [f for f in frames if "llama_fast" in f["filename"] or "scripts" in f["filename"]]
        top = frames[0] if frames else {"filename": "?", "line": 0, "name": "?"}
        key = (f"{top['filename'].split('site-packages/')[-1]}:{top['line']} {top['name']}"
               + (f" <- {ours[0]['filename'].split('/')[-1]}:{ours[0]['line']} {ours[0]['name']}" if ours else ""))
        groups[key] = groups.get(key, 0) + ev["size"]
    say(f"{k}: allocator trace: peak of blocks allocated during a fresh warm-up + run {best / 1e6:.1f} MB; "
        f"alive at that peak:")
    for key, size in sorted(groups.items(), key=lambda kv: -kv[1])[:15]:
        say(f"    {size / 1e6:8.2f} MB  {key}")
    fast_runner(fast, variant, w)


def recompile_report(say, k, fast, variant, w, prompts):
    """New prompt lengths at the same cache length, same LlamaFast (no reconfigure): graphs compiled and
    captured, and each first call's time."""
    from torch._dynamo.utils import counters

    fast_runner(fast, variant, w)(w.prompt())  # configured and warm at the seed length
    decode = fast.steps[1]
    for p in prompts:
        ids = Workload(w.batch, p, w.new_tokens, w.cache).prompt()
        before = counters["stats"]["unique_graphs"]
        captured = len(getattr(decode, "_graphs", {}))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fast.generate(ids, max_new_tokens=w.new_tokens, min_new_tokens=w.new_tokens)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        say(f"{k}: prompt {p} (cache {w.cache}): first call {dt:.3f}s, graphs compiled "
            f"+{counters['stats']['unique_graphs'] - before}, decode graphs captured "
            f"+{len(getattr(decode, '_graphs', {})) - captured}")


if __name__ == "__main__":
    sys.exit(main())
