"""Micro-benchmark: the fused decode GEMV forms at a model's decode shapes (Llama-7B by default) against the plain
Triton GEMV, and the split-K decode attention against masked SDPA over chunk / warps configs. Each call is timed
inside a CUDA graph of 10 calls, weights rotated over 4 copies so L2 never holds them (as in a real step).

  python scripts/fused_bench.py
  python scripts/fused_bench.py --sweep-configs   # also the forms the step runs (and the qkv+RoPE GEMV) over
                                                  # a wider config grid than the autotuner's: the four best
                                                  # configs, then the pinned shapes' own times
  python scripts/fused_bench.py --sweep-configs --gemv-only   # without the attention part
  python scripts/fused_bench.py --weights fp16,int8,int4 --gemv-only [--sweep-configs]
                                                  # also each fused form with int8 and int4 (group 128) weights,
                                                  # GB/s counting the bytes it reads (qweight, scales, offsets);
                                                  # with --sweep-configs over QUANT_GRID, then the pinned configs
  python scripts/fused_bench.py --weights int4 --gemv-only --sweep-configs --persist [--pdl 2]
                                                  # also the persistent forms (config key PERSIST: programs
                                                  # per SM that walk the row blocks) of the one-tile shapes
  python scripts/fused_bench.py --weights int4,int8 --gemv-only --only wqkv --dequant
                                                  # one decode GEMV only (a target for Nsight Compute:
                                                  # ncu -k regex:gemv_fused --launch-skip 2 --launch-count 1
                                                  # profiles the plain form's third warm-up launch); --dequant:
                                                  # also the prefill's whole-weight dequantization of each
                                                  # layer weight (TB/s counting the read and the write)
  python scripts/fused_bench.py --device cpu --shape tiny --cache 80 --attended 70 --reps 1 --calls 1
    (Triton's interpreter on the CPU: checks that every launch builds and runs, times nothing useful)
"""
from __future__ import annotations

import argparse
import itertools
import sys

import torch
import torch.nn.functional as F

from bench_util import decode_gemv_shapes, kernel_device, rotating, time_per_call
from llama_fast.config import NAMED_SHAPES

# the forms each decode GEMV is timed in: plain, then the fused form(s) that replace it
GEMV_FORMS = {"wqkv": ("gemv", "rmsnorm"), "wo": ("gemv", "residual"), "w13": ("gemv", "swiglu"),
              "w2": ("gemv", "residual"), "head": ("gemv", "rmsnorm")}
# the form the decode step runs for each GEMV (wqkv: the qkv+RoPE kernel, swept on its own), swept with
# --sweep-configs
STEP_FORMS = {"wo": "residual", "w13": "swiglu", "w2": "residual", "head": "rmsnorm"}
# (BLOCK_N, BLOCK_K, num_warps) of --sweep-configs; the pinned configs of the step's forms are among them
GEMV_GRID = list(itertools.product((8, 16), (256, 512, 1024), (4, 8)))
QKV_GRID = list(itertools.product((8, 16, 32), (256, 512), (4, 8)))
ATTN_GRID = list(itertools.product((32, 64, 128), (2, 4, 8)))  # (slots per program, warps)
WEIGHTS = ("fp16", "int8", "int4")  # int4: group 128 (the default scheme) where it divides K, else 64 or 32
# (BLOCK_N, BLOCK_K, num_warps) of --sweep-configs for quantized weights: K tiles of 16 or 8 bytes per thread and
# row (configs.QUANT_CONFIGS) at 2-8 warps; the qkv+RoPE GEMV takes the BLOCK_N that divide a head dim
QUANT_GRID = {fmt: [(bn, per * 32 * w // d, w) for bn in (8, 16) for w in (2, 4, 8) for d in (1, 2)]
              for fmt, per in (("int8", 16), ("int4", 32))}  # weights in 16 bytes
# (BLOCK_N, BLOCK_K, num_warps, PERSIST) of --persist: the row in one K tile of 4096 (Llama-7B's width; a wider
# row takes one program a block), 16 bytes a thread and row (int4 also 8, at 8 warps), 1-4 persistent programs
# per SM
PERSIST_GRID = {"int4": [(bn, 4096, w, p) for bn in (8, 16) for w in (4, 8) for p in (1, 2, 3, 4)],
                "int8": [(bn, 4096, 8, p) for bn in (8, 16) for p in (1, 2, 3)]}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="fused_bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama-7b", choices=sorted(NAMED_SHAPES), help="model whose shapes are timed")
    ap.add_argument("--cache", type=int, default=1200, help="attention: KV cache slots")
    ap.add_argument("--attended", type=int, default=1100, help="attention: slots attended (the rest masked)")
    ap.add_argument("--sweep-configs", action="store_true", help="also sweep each step form over a config grid")
    ap.add_argument("--gemv-only", action="store_true", help="leave out the attention part")
    ap.add_argument("--weights", default="fp16", help=f"comma-separated weight formats to time, of: "
                                                      f"{', '.join(WEIGHTS)} (int4: group 128)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: the kernels in Triton's interpreter (a check, not a timing)")
    ap.add_argument("--persist", action="store_true",
                    help="with --sweep-configs and quantized weights: also the persistent forms (PERSIST_GRID)")
    ap.add_argument("--pdl", type=int, default=0, choices=(0, 2),
                    help="the GEMVs' PDL mode (2: each launch lets the next one in after its main loop, where the "
                         "GPU has PDL)")
    ap.add_argument("--only", default=None, metavar="NAMES",
                    help="comma-separated decode GEMVs to time (wqkv, wo, w13, w2, head; default: all)")
    ap.add_argument("--dequant", action="store_true",
                    help="also the prefill's whole-weight dequantization of each layer weight, per quantized format")
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions (median)")
    ap.add_argument("--calls", type=int, default=10, help="calls per timed repetition (per CUDA graph)")
    args = ap.parse_args(argv)
    if not 1 <= args.attended <= args.cache:
        ap.error("--attended must be between 1 and --cache")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA GPU here (--device cpu runs the kernels in Triton's interpreter)")
    if args.reps < 1 or args.calls < 1:
        ap.error("--reps and --calls must be at least 1")
    args.weights = args.weights.split(",")
    unknown = [w for w in args.weights if w not in WEIGHTS]
    if unknown:
        ap.error(f"--weights: unknown {', '.join(unknown)} (choose from {', '.join(WEIGHTS)})")
    if args.persist and not (args.sweep_configs and set(args.weights) - {"fp16"}):
        ap.error("--persist sweeps the quantized forms: give --sweep-configs and --weights int8 and / or int4")
    names = ("wqkv", "wo", "w13", "w2", "head")
    args.only = names if args.only is None else tuple(args.only.split(","))
    if set(args.only) - set(names):
        ap.error(f"--only: unknown {', '.join(sorted(set(args.only) - set(names)))} (choose from {', '.join(names)})")
    return args


def form_switches(form: str) -> tuple[int, int]:
    """(PROLOGUE, EPILOGUE) of the fused GEMV kernel for a form."""
    from llama_fast.kernels.gemv import (EPILOGUE_NONE, EPILOGUE_RESIDUAL_SS, EPILOGUE_SWIGLU, PROLOGUE_NONE,
                                         PROLOGUE_RMSNORM)

    return {"gemv": (PROLOGUE_NONE, EPILOGUE_NONE), "rmsnorm": (PROLOGUE_RMSNORM, EPILOGUE_NONE),
            "residual": (PROLOGUE_NONE, EPILOGUE_RESIDUAL_SS), "swiglu": (PROLOGUE_RMSNORM, EPILOGUE_SWIGLU)}[form]


def best_and_pinned(name: str, form: str, nbytes: int, results: list, pinned: list[tuple]) -> list[str]:
    """Report lines of a config sweep: the four best (us per call, bn, bk, warps[, persist]) results, then those
    of the pinned configs (tuples as the results' configs)."""
    def line(kind, t, bn, bk, w, persist=0):
        return (f"      {name} {form} {kind} {t:7.1f} us {nbytes / t / 1e3:6.0f} GB/s  BN{bn} BK{bk} warps {w}"
                + (f" persist {persist}" if persist else ""))
    results = sorted(results)
    return ([line("best", *r) for r in results[:4]]
            + [line("at", *r) for r in results if tuple(r[1:]) in pinned])


def quant_weight(fmt: str, N: int, K: int, device, dtype) -> tuple[torch.Tensor, dict]:
    """(qweight, the ops' scales / offsets / group) of a random (N, K) weight in a quantized format
    (llama_fast/quant.py's layout; the values do not change the time)."""
    if fmt == "int8":
        return (torch.randint(-127, 128, (N, K), dtype=torch.int8, device=device),
                {"scales": torch.rand(N, device=device, dtype=dtype) * 0.01})
    group = next(g for g in (128, 64, 32) if K % g == 0)  # quant.py's fallback for a K that 128 does not divide
    groups = (N, K // group)
    return (torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, device=device),
            {"scales": torch.rand(groups, device=device, dtype=dtype) * 0.01,
             "offsets": -torch.rand(groups, device=device, dtype=dtype) * 0.08, "group": group})


def weight_bytes(w: torch.Tensor, quant: dict) -> int:
    """The bytes a GEMV reads of its weight: the (q)weight, and the scales and offsets of a quantized one."""
    return sum(t.numel() * t.element_size() for t in (w, *quant.values()) if torch.is_tensor(t))


def main(argv=None) -> int:
    args = parse_args(argv)
    dev = kernel_device(args.device)
    torch.manual_seed(0)
    cfg = NAMED_SHAPES[args.shape]

    def bench(fn, reps=args.reps):
        return time_per_call(fn, dev, reps, args.calls) * 1e6  # us per call

    gemvs(args, cfg, dev, bench)
    if not args.gemv_only:
        attention(args, cfg, dev, bench)
    return 0


def gemvs(args, cfg, dev, bench):
    """Each decode GEMV plain and fused (the op's eager launch: pinned configs); with --sweep-configs, the
    step's forms over GEMV_GRID and the qkv+RoPE GEMV over QKV_GRID."""
    from llama_fast.kernels.gemv import _launch_fused, ss_partials

    dt, eps = torch.float16, cfg.norm_eps
    x = torch.randn(1, cfg.dim, device=dev, dtype=dt)
    act = torch.randn(1, cfg.intermediate_size, device=dev, dtype=dt)
    g = torch.ones(cfg.dim, device=dev, dtype=dt)
    ss = ss_partials(x)
    res = torch.randn(1, cfg.dim, device=dev, dtype=dt)
    if args.sweep_configs and "fp16" in args.weights:
        sweep_qkv(args, cfg, x, g, ss, bench)
    for name, (N, K) in decode_gemv_shapes(cfg).items():
        if name not in args.only:
            continue
        xin = act if name == "w2" else x
        if "fp16" in args.weights:
            w = rotating(lambda: torch.randn(N, K, device=dev, dtype=dt) * 0.02)
            for form in GEMV_FORMS[name]:
                pro, epi = form_switches(form)
                n = N // 2 if form == "swiglu" else N
                t = bench(lambda: _launch_fused(xin, w(), g, res, ss if pro else xin, eps, pro, epi, n, args.pdl))
                print(f"{name:5s} {form:9s} {t:7.1f} us  {N * K * 2 / t / 1e3:6.0f} GB/s", flush=True)
                if args.sweep_configs and STEP_FORMS.get(name) == form:
                    sweep_gemv(args, name, form, N, K, n, w, xin, g, res, ss if pro else xin, eps, bench)
        for fmt in (f for f in args.weights if f != "fp16"):
            quantized_gemv(args, name, fmt, N, K, xin, g, res, ss, eps, bench)
    for fmt in (f for f in args.weights if f != "fp16" and "wqkv" in args.only):
        quantized_qkv(args, cfg, fmt, x, g, ss, bench)
    if args.dequant:
        for fmt in (f for f in args.weights if f != "fp16"):
            dequant(args, cfg, fmt, dev, dt, bench)


def dequant(args, cfg, fmt, dev, dt, bench):
    """The prefill's whole-weight dequantization (kernels.dequant.dequantize_weight) of each layer weight in
    --only, in a quantized format: us per weight, TB/s counting the bytes read (qweight, scales, offsets) and
    the model-dtype weight written, and the layer's sum."""
    from llama_fast.kernels.dequant import dequantize_weight

    total = 0.0
    for name, (N, K) in decode_gemv_shapes(cfg).items():
        if name == "head" or name not in args.only:  # the head is not a layer weight
            continue
        wq = rotating(lambda: quant_weight(fmt, N, K, dev, dt))

        def call():
            q, quant = wq()
            return dequantize_weight(q, quant["scales"], quant.get("offsets"), quant.get("group", 0))
        t = bench(call)
        total += t
        nbytes = weight_bytes(*wq()) + N * K * torch.empty((), dtype=dt).element_size()
        print(f"{name:5s} dequantize/{fmt:5s} {t:7.1f} us  {nbytes / t / 1e6:5.2f} TB/s", flush=True)
    print(f"layer dequantize/{fmt:5s} {total:7.1f} us", flush=True)


def quantized_gemv(args, name, fmt, N, K, x, g, res, ss, eps, bench):
    """The GEMV `name` with quantized weights in each fused form (the op's eager launch: pinned configs), GB/s
    counting the bytes it reads; with --sweep-configs, the step's form over QUANT_GRID[fmt]."""
    from llama_fast.kernels.configs import pinned_config
    from llama_fast.kernels.gemv import _launch_fused

    dev, dt = x.device, x.dtype
    wq = rotating(lambda: quant_weight(fmt, N, K, dev, dt))
    nbytes = weight_bytes(*wq())
    for form in GEMV_FORMS[name]:
        pro, epi = form_switches(form)
        n = N // 2 if form == "swiglu" else N

        def call():
            q, quant = wq()
            return _launch_fused(x, q, g, res, ss if pro else x, eps, pro, epi, n, args.pdl, **quant)
        t = bench(call)
        print(f"{name:5s} {form + '/' + fmt:14s} {t:7.1f} us  {nbytes / t / 1e3:6.0f} GB/s", flush=True)
        if args.sweep_configs and STEP_FORMS.get(name) == form:
            p = pinned_config(f"{form}_{fmt}", n, K)
            grid = with_pinned(QUANT_GRID[fmt] + persist_configs(args, fmt, K), p)
            results = sweep_configs(f"{form}_{fmt}", f"{name} {form}/{fmt}", grid, call, bench, args.reps)
            for line in best_and_pinned(name, f"{form}/{fmt}", nbytes, results,
                                        [pinned_tuple(p)]):
                print(line, flush=True)


def persist_configs(args, fmt: str, K: int) -> list[tuple]:
    """With --persist, PERSIST_GRID's configs whose one K tile holds the row (a wider row would time the launch's
    fallback to one program a block under a persistent config's name)."""
    return [c for c in PERSIST_GRID[fmt] if K <= c[1]] if args.persist else []


def with_pinned(grid: list[tuple], config: dict) -> list[tuple]:
    """grid with the pinned config (a dict) added where the grid lacks it, so that the sweep always times the
    pinned form (its "at" line)."""
    pinned = pinned_tuple(config)
    return grid if pinned in {tuple(c) + (0,) * (4 - len(c)) for c in grid} else grid + [pinned]


def pinned_tuple(config: dict) -> tuple:
    """A config dict as the sweeps' result tuples name it: (bn, bk, warps, persist)."""
    return config["BLOCK_N"], config["BLOCK_K"], config["num_warps"], config.get("PERSIST", 0)


def sweep_configs(form: str, label: str, grid: list[tuple], call, bench, reps: int, keep=None) -> list[tuple]:
    """(us per call, bn, bk, warps, persist) of call (an op's eager launch) under each (bn, bk, warps[, persist])
    config of grid for form (kernels.configs.CONFIG_OVERRIDE; those keep(bn) accepts); a config the GPU cannot
    run is skipped with a line."""
    from bench_util import config_override

    results = []
    for bn, bk, warps, *persist in grid:
        if keep is not None and not keep(bn):
            continue
        persist = persist[0] if persist else 0
        config = {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": 2,
                  **({"PERSIST": persist} if persist else {})}
        with config_override({form: config}):
            try:
                results.append((bench(call, reps=min(reps, 10)), bn, bk, warps, persist))
            except Exception as e:  # out of resources for a config: skip it, say so
                print(f"      {label} BN{bn} BK{bk} w{warps}" + (f" P{persist}" if persist else "")
                      + f": {type(e).__name__}", flush=True)
    return results


def quantized_qkv(args, cfg, fmt, x, g, ss, bench):
    """The wqkv GEMV with RoPE and the cache write, quantized weights: the op (pinned config); with
    --sweep-configs over QUANT_GRID[fmt] (the BLOCK_N that divide the head dim)."""
    from llama_fast.kernels.configs import pinned_config
    from llama_fast.kernels.qkv_rope import gemv_rmsnorm_qkv_rope

    dev, dt = x.device, x.dtype
    H, Hkv, D, S, K = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, args.cache, cfg.dim
    N = (H + 2 * Hkv) * D
    wq = rotating(lambda: quant_weight(fmt, N, K, dev, dt))
    nbytes = weight_bytes(*wq())
    kc = torch.zeros(1, Hkv, S, D, device=dev, dtype=dt)
    vc = torch.zeros_like(kc)
    cos, sin = torch.rand(D, device=dev, dtype=dt), torch.rand(D, device=dev, dtype=dt)
    pos = torch.tensor([args.attended - 1], device=dev)

    def call():
        q, quant = wq()
        return gemv_rmsnorm_qkv_rope(x, ss, g, q, cfg.norm_eps, cos, sin, kc, vc, pos, H, args.pdl, **quant)
    t = bench(call)
    p = pinned_config(f"qkv_rope_{fmt}", N, K)
    print(f"wqkv  {'qkv_rope/' + fmt:14s} {t:7.1f} us  {nbytes / t / 1e3:6.0f} GB/s  {p}", flush=True)
    if not args.sweep_configs:
        return
    grid = with_pinned(QUANT_GRID[fmt] + persist_configs(args, fmt, K), p)
    # a program's rows must stay within one head
    results = sweep_configs(f"qkv_rope_{fmt}", f"wqkv qkv_rope/{fmt}", grid, call, bench, args.reps,
                            keep=lambda bn: D % bn == 0)
    for line in best_and_pinned("wqkv", f"qkv_rope/{fmt}", nbytes, results,
                                [pinned_tuple(p)]):
        print(line, flush=True)


def sweep_gemv(args, name, form, N, K, n, w, x, g, res, ss, eps, bench):
    """The op's eager launch under each GEMV_GRID config (num_stages does nothing for these loads: Triton emits
    no cp.async for them)."""
    from llama_fast.kernels.configs import gemv_config
    from llama_fast.kernels.gemv import _launch_fused

    pro, epi = form_switches(form)
    def call():
        return _launch_fused(x, w(), g, res, ss, eps, pro, epi, n, args.pdl)
    results = sweep_configs(form, f"{name} {form}", GEMV_GRID, call, bench, args.reps)
    pinned = gemv_config(form, n)
    for line in best_and_pinned(name, form, N * K * 2, results,
                                [pinned_tuple(pinned)]):
        print(line, flush=True)


def sweep_qkv(args, cfg, x, g, ss, bench):
    """The wqkv GEMV with RoPE and the cache write: the op (pinned config), then QKV_GRID."""
    from llama_fast.kernels.configs import QKV_ROPE_CONFIG
    from llama_fast.kernels.qkv_rope import gemv_rmsnorm_qkv_rope

    dev, dt = x.device, x.dtype
    H, Hkv, D, S, K = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, args.cache, cfg.dim
    N = (H + 2 * Hkv) * D
    w = rotating(lambda: torch.randn(N, K, device=dev, dtype=dt) * 0.02)
    kc = torch.zeros(1, Hkv, S, D, device=dev, dtype=dt)
    vc = torch.zeros_like(kc)
    cos, sin = torch.rand(D, device=dev, dtype=dt), torch.rand(D, device=dev, dtype=dt)
    pos = torch.tensor([args.attended - 1], device=dev)

    def call():
        return gemv_rmsnorm_qkv_rope(x, ss, g, w(), cfg.norm_eps, cos, sin, kc, vc, pos, H, args.pdl)
    t = bench(call)
    print(f"wqkv  qkv_rope pinned {t:7.1f} us  {N * K * 2 / t / 1e3:6.0f} GB/s  {QKV_ROPE_CONFIG}", flush=True)
    # a program's rows must stay within one head
    results = sweep_configs("qkv_rope", "wqkv qkv_rope", QKV_GRID, call, bench, args.reps, keep=lambda bn: D % bn == 0)
    pinned = [pinned_tuple(QKV_ROPE_CONFIG)]
    for line in best_and_pinned("wqkv", "qkv_rope", N * K * 2, results, pinned):
        print(line, flush=True)


def attention(args, cfg, dev, bench):
    """Masked SDPA, both decode attention ops (eager launches: the pinned config), then the two-kernel form's
    split and combine kernels over ATTN_GRID."""
    import triton

    from llama_fast.kernels import decode_attention, decode_attention_one_launch
    from llama_fast.kernels.attention import _decode_attn_combine_kernel, _decode_attn_split_kernel
    from llama_fast.kernels.configs import ATTN_EAGER_CONFIG

    dt, B, H, Hkv, Dh, S = torch.float16, 1, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, args.cache
    q = torch.randn(B, H, 1, Dh, device=dev, dtype=dt)
    kv = rotating(lambda: (torch.randn(B, Hkv, S, Dh, device=dev, dtype=dt),
                           torch.randn(B, Hkv, S, Dh, device=dev, dtype=dt)))
    mask = torch.zeros(B, S, dtype=torch.bool, device=dev)
    mask[:, :args.attended] = True
    m4 = mask[:, None, None, :]

    def sdpa():
        k, v = kv()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m4, enable_gqa=H != Hkv)
    print(f"attn  sdpa-masked   {bench(sdpa):7.1f} us", flush=True)
    pinned = f"chunk {ATTN_EAGER_CONFIG['CHUNK']}, {ATTN_EAGER_CONFIG['num_warps']} warps"
    t = bench(lambda: decode_attention(q, *kv(), mask, Dh ** -0.5))
    print(f"attn  decode_attention ({pinned}) {t:7.1f} us", flush=True)
    cnt = torch.zeros(B * H, dtype=torch.int32, device=dev)
    t = bench(lambda: decode_attention_one_launch(q, *kv(), mask, Dh ** -0.5, cnt))
    print(f"attn  decode_attention_one_launch ({pinned}) {t:7.1f} us", flush=True)
    for chunk, warps in ATTN_GRID:
        nsplit = triton.cdiv(S, chunk)
        m = torch.empty(B * H * nsplit, device=dev)
        l = torch.empty_like(m)
        acc = torch.empty(B * H * nsplit, Dh, device=dev)
        o = torch.empty(B, H, 1, Dh, device=dev, dtype=dt)

        def split():
            k, v = kv()
            _decode_attn_split_kernel[(B * H, nsplit)](
                q, k, v, mask, m, l, acc, S, H, H // Hkv, Dh ** -0.5, q.stride(0), q.stride(1), k.stride(0),
                k.stride(1), k.stride(2), mask.stride(0), nsplit, D=Dh, CHUNK=chunk, USE_PDL=0,
                NEWEST_AFTER_WAIT=False, num_warps=warps)

        def combine():
            _decode_attn_combine_kernel[(B * H,)](m, l, acc, o, nsplit, D=Dh, SPLITS=triton.next_power_of_2(nsplit),
                                                  USE_PDL=0, num_warps=warps)
        ts, tc = bench(split), bench(combine)
        print(f"attn  chunk {chunk:3d} warps {warps}: split {ts:6.1f} us + combine {tc:5.1f} us", flush=True)


if __name__ == "__main__":
    sys.exit(main())
