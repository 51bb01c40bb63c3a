"""Where a decode step's time goes, on one GPU. For each variant: one generate of N new tokens under
torch.profiler (CUDA activity; kernels inside the captured decode graph are traced individually), then the
kernels' GPU time per decode step by kernel name (the prefill's subtracted), their sum against the step's
wall time, each decode GEMV's time and bandwidth in place, and the idle gap after each kind of kernel.

  python scripts/profile_decode.py --variants gemv,fused-gemv-early --log-file profile.log
  python scripts/profile_decode.py --variants fused-gemv-early,fused-gemm --batch 2   (cuBLAS against the small-M GEMM)
  python scripts/profile_decode.py --model random:llama3-8b --dtype bf16 --variants fused-gemm-kernels --batch 8
  torchrun --nproc-per-node 2 scripts/profile_decode.py --tp 2 --variants fused-gemm   (rank 0's kernels, its
      shard's GEMVs, the all-reduce kernels among them; every rank profiles, rank 0 prints)
Variant keys as in perf_lab.py (harness.VARIANTS keys, or specs such as fused-gemv-early~pdl_gemv_early).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench_util import check_quantize, decode_gemv_shapes, logger, resolve_variants
from llama_fast.generate import LlamaFast
from llama_fast.harness import VARIANTS, Workload, fast_runner
from llama_fast.loading import load_weights, parse_dtype


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="profile_decode.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="random:llama-7b")
    ap.add_argument("--dtype", default="fp16", help="the model's dtype: fp16 or bf16 (Llama-3's)")
    ap.add_argument("--variants", default="gemv,fused",
                    help="comma-separated variant keys or specs (base+flag, base~flag, base@chunk)")
    ap.add_argument("--batch", type=int, default=1, help="rows per step (batch > 1: the small-M GEMM or cuBLAS)")
    ap.add_argument("--new", type=int, default=65, help="new tokens per profiled generate (prompt 1000, cache 1200)")
    ap.add_argument("--top", type=int, default=18, help="kernels listed per decode step")
    ap.add_argument("--prefill-top", type=int, default=0,
                    help="also print the prefill's (1-new-token run's) top kernels by GPU time")
    ap.add_argument("--quantize", default=None, metavar="SCHEME",
                    help="profile on weight-only quantized weights (int8, int4, int4:gG); the variants are fp16 "
                         "ones (their kernels dequantize in registers)")
    ap.add_argument("--tp", type=int, default=1,
                    help="tensor-parallel degree: run under torchrun with this many processes (rank 0 prints)")
    ap.add_argument("--log-file", default=None,
                    help="also append the output to this file (not --log: torchrun would take that as its own option)")
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.tp < 1:
        ap.error("--tp must be at least 1")
    if args.tp > 1:
        from llama_fast.parallel import env_world

        env = env_world()
        if env is None or env[1] != args.tp:
            ap.error(f"--tp {args.tp} runs under torchrun with {args.tp} processes: torchrun --nproc-per-node "
                     f"{args.tp} scripts/profile_decode.py --tp {args.tp} ...")
    if args.batch < 1:
        ap.error("--batch must be at least 1")
    if args.new < 2:
        ap.error("--new must be at least 2 (one decode step after the prefill's token)")
    try:
        args.variants = resolve_variants(args.variants.split(","), VARIANTS)
    except ValueError as e:
        ap.error(f"--variants: {e}")
    baselines = [k for k, v in args.variants.items() if v.is_transformers]
    if baselines:
        ap.error(f"--variants: {', '.join(baselines)}: transformers baselines are not profiled here")
    check_quantize(ap, args)
    try:
        args.dtype = parse_dtype(args.dtype)
    except ValueError as e:
        ap.error(f"--dtype: {e}")
    if not torch.cuda.is_available():
        ap.error("no CUDA GPU here: the profile reads the kernels' CUDA activity")
    return args


def main(argv=None):
    args = parse_args(argv)
    from llama_fast.api import limit_cublas_workspace

    limit_cublas_workspace()
    if args.tp > 1:  # each rank loads only its shard; the group comes from torchrun's environment
        from llama_fast.api import load_model

        fast = load_model(args.model, "auto", args.dtype, quantize=args.quantize, tp=args.tp)
        cfg = fast.model.config  # this rank's shard: its GEMVs' shapes
        rank = torch.distributed.get_rank()
    else:
        cfg, model, tok = load_weights(args.model, torch.device("cuda"), args.dtype,
                                       quantize=args.quantize)
        fast = LlamaFast(model, tok, args.model)
        rank = 0
    say = logger(args.log_file) if rank == 0 else (lambda line: None)
    if args.tp > 1:
        say(f"# tp {args.tp}: rank 0 of {args.tp}; each rank's step runs the same kernels on its shard")
    for k, variant in args.variants.items():
        w = Workload(args.batch, 1000, args.new, 1200)
        run = fast_runner(fast, variant, w)
        ids = w.prompt()
        run(ids)
        run(ids)
        w1 = Workload(args.batch, 1000, 1, 1200)
        run1 = fast_runner(fast, variant, w1)
        run1(ids)
        t = []
        for r in (run1, run, run1, run):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            r(ids)
            torch.cuda.synchronize()
            t.append(time.perf_counter() - t0)
        step_ms = 1e3 * (min(t[1], t[3]) - min(t[0], t[2])) / (args.new - 1)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run(ids)
            torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof1:
            run1(ids)
            torch.cuda.synchronize()
        rows = decode_rows(averages(prof), averages(prof1), args.new - 1)
        total = sum(us for us, _, _ in rows)
        say(f"## {k}: wall {step_ms:.3f} ms/step; kernel time {total / 1e3:.3f} ms/step (sum over kernels, "
            f"prefill subtracted); gap {step_ms - total / 1e3:.3f} ms/step")
        for us, n, name in rows[:args.top]:
            say(f"  {us:8.1f} us/step  x{n / args.new:6.1f}/step  {name[:110]}")
        try:
            for line in timeline_report(prof, cfg, projection_kernel(args.batch)):
                say(line)
        except Exception as e:  # the per-kind split is a bonus: keep the kernel tables
            say(f"  timeline: failed: {type(e).__name__}: {e}")
        if args.prefill_top:
            pre_ms = 1e3 * min(t[0], t[2])
            rows1 = sorted(((e.device_time_total, e.count, e.key) for e in prof1.key_averages()
                            if e.device_time_total > 0), reverse=True)
            say(f"## {k}: prefill (1 new token) wall {pre_ms:.1f} ms; kernel time "
                f"{sum(r[0] for r in rows1) / 1e3:.1f} ms (sum over kernels)")
            for us, n, name in rows1[:args.prefill_top]:
                say(f"  {us / 1e3:8.3f} ms  x{n:5d}  {name[:110]}")
    return 0


def averages(prof) -> list[tuple[str, float, int]]:
    """(kernel name, device us in all, calls) of each kernel a profiler saw."""
    return [(e.key, e.device_time_total, e.count) for e in prof.key_averages()]


def decode_rows(run: list[tuple[str, float, int]], prefill: list[tuple[str, float, int]],
                steps: int) -> list[tuple[float, int, str]]:
    """(us per decode step, calls in the run, name) of each kernel, longest first: a whole run's GPU time
    less the same kernel's time in a 1-new-token run (the prefill), over the run's decode steps. Kernels
    with no time left are dropped."""
    pre = {name: us for name, us, _ in prefill}
    rows = [((us - pre.get(name, 0.0)) / steps, n, name) for name, us, n in run if us > 0]
    return sorted((r for r in rows if r[0] > 0), reverse=True)


def projection_kernel(batch: int) -> str:
    """What the name of a decode projection's kernel contains: the GEMV's at batch 1, the small-M GEMM's above (a
    cuBLAS step has neither: its per-kind split is skipped)."""
    return "_gemv" if batch == 1 else "_gemm_kernel"


def timeline_report(prof, cfg, pattern: str = "_gemv") -> list[str]:
    """From the kernel timeline: each decode projection's mean time and bandwidth (the kernels whose name contains
    pattern, labelled by their position in the step: 4 per layer, then the head) and the mean idle gap after each
    kind of kernel. With PDL a kernel's time includes its wait for the one before it."""
    import json
    import os
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    prof.export_chrome_trace(path)
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    os.unlink(path)
    kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    gemvs = [e for e in kernels if pattern in e["name"]]
    per_step = 4 * cfg.n_layers + 1
    if len(gemvs) < per_step:
        return [f"  timeline: {len(gemvs)} projection kernels, fewer than one step's {per_step}: per-kind split "
                "skipped"]
    extra = len(gemvs) % per_step  # GEMVs outside whole decode steps (e.g. the warm-up's): the first ones
    out = [f"  timeline: {extra} projection kernels before the first whole step left out"] if extra else []
    gemvs = gemvs[extra:]
    if not any(e.get("dur", 0) > 0 for e in gemvs):  # seen with torch 2.11 on a tp 1 and a tp 2 fused-gemm step
        return out + [f"  timeline: the trace's {len(gemvs)} decode projection events carry no durations: per-kind "
                      "split skipped (the per-kernel table above comes from the profiler's own averages)"]
    kinds = ["wqkv", "wo", "w13", "w2"]
    shapes = decode_gemv_shapes(cfg)
    label = {}
    for i, e in enumerate(gemvs):
        j = i % per_step
        label[id(e)] = "head" if j == per_step - 1 else kinds[j % 4]
    out.append(f"  decode projections ({pattern}) in place (mean over the run's steps):")
    for kind in kinds + ["head"]:
        durs = [e["dur"] for e in gemvs if label[id(e)] == kind]
        n, k = shapes[kind]
        mean = sum(durs) / len(durs)
        if mean <= 0:
            out.append(f"    {kind:5s} no timed kernels")
            continue
        out.append(f"    {kind:5s} {mean:7.1f} us  {n * k * 2 / mean / 1e3:6.0f} GB/s  (x{len(durs)})")
    first = gemvs[0]["ts"]
    gaps: dict[str, list[float]] = {}
    decode = [e for e in kernels if e["ts"] >= first]
    for a, b in zip(decode, decode[1:]):
        name = label.get(id(a)) or a["name"][:48]
        gaps.setdefault(name, []).append(max(0.0, b["ts"] - (a["ts"] + a["dur"])))
    out.append("  idle gap after each kernel kind (mean us, count), decode region:")
    for name, g in sorted(gaps.items(), key=lambda kv: -sum(kv[1]))[:12]:
        out.append(f"    {sum(g) / len(g):6.2f} us  x{len(g):6d}  after {name}")
    return out


if __name__ == "__main__":
    sys.exit(main())
