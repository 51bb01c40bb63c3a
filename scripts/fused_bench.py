"""Device probe: the fused decode kernels at Llama-7B decode shapes against the plain Triton GEMV, and the
split-K attention (chunk / warps) against masked SDPA. Each call is timed inside a CUDA graph of 10 calls,
weights rotated over 4 copies so L2 never holds them (as in a real step).

  python scripts/fused_bench.py | tee $OUT/fused_bench.log
  python scripts/fused_bench.py --sweep-configs   # also: every GEMV form over a wider config grid than the
                                                  # autotuner's, best vs the pinned shapes (run 61 swept a
                                                  # since-removed PIPELINE option too, at commit 8b2a841)
  python scripts/fused_bench.py --sweep-configs --gemv-only   # without the attention part
"""
from __future__ import annotations

import itertools
import sys

import torch
import torch.nn.functional as F
import triton

from lab_util import graph_time, rotating
from llama_fast import kernels as kn


def bench(fn, reps=30):
    return graph_time(fn, reps) * 1e6  # us per call


def main():
    torch.manual_seed(0)
    dev, dt = torch.device("cuda"), torch.float16
    D, I, eps = 4096, 11008, 1e-6
    x = torch.randn(1, D, device=dev, dtype=dt)
    act = torch.randn(1, I, device=dev, dtype=dt)
    g = torch.ones(D, device=dev, dtype=dt)
    ss = kn.ss_partials(x)
    res = torch.randn(1, D, device=dev, dtype=dt)
    P, L = kn.PROLOGUE_RMSNORM, kn.PROLOGUE_RMSNORM_LATE
    N0, RS, SW = kn.EPILOGUE_NONE, kn.EPILOGUE_RESIDUAL_SS, kn.EPILOGUE_SWIGLU
    total = {}
    cases = {
        "wqkv": (12288, D, [("plain", x, kn.PROLOGUE_NONE, N0), ("rmsnorm", x, P, N0), ("rmsnorm-late", x, L, N0)]),
        "wo": (D, D, [("plain", x, kn.PROLOGUE_NONE, N0), ("residual-ss", x, kn.PROLOGUE_NONE, RS)]),
        "w13": (2 * I, D, [("plain", x, kn.PROLOGUE_NONE, N0), ("swiglu", x, P, SW), ("swiglu-late", x, L, SW)]),
        "w2": (D, I, [("plain", act, kn.PROLOGUE_NONE, N0), ("residual-ss", act, kn.PROLOGUE_NONE, RS)]),
        "out": (32000, D, [("plain", x, kn.PROLOGUE_NONE, N0), ("rmsnorm", x, P, N0), ("rmsnorm-late", x, L, N0)]),
    }
    if "--sweep-configs" in sys.argv:
        sweep_qkv(x, g, ss, eps)
    for name, (N, K, kinds) in cases.items():
        w = rotating(lambda: torch.randn(N, K, device=dev, dtype=dt) * 0.02)
        for label, xin, pro, epi in kinds:
            n = N // 2 if epi == SW else N
            t = bench(lambda: kn._launch_fused(xin, w(), g, res, ss if pro else xin, eps, pro, epi, n))
            total[label.split("-")[0] if label != "plain" else "plain"] = None
            print(f"{name:5s} {label:13s} {t:7.1f} us  {N * K * 2 / t / 1e3:6.0f} GB/s", flush=True)
            swept = label in ("residual-ss", "swiglu") or (name, label) == ("out", "rmsnorm")  # the forms the step runs
            if "--sweep-configs" in sys.argv and swept:
                sweep_configs(name, label, N, K, n, w, xin, g, res, ss if pro else xin, eps, pro, epi)
    if "--gemv-only" in sys.argv:
        return
    # attention: B=1, H=32, S=1200, 1100 valid slots
    B, H, S, Dh = 1, 32, 1200, 128
    q = torch.randn(B, H, 1, Dh, device=dev, dtype=dt)
    kv = rotating(lambda: (torch.randn(B, H, S, Dh, device=dev, dtype=dt), torch.randn(B, H, S, Dh, device=dev, dtype=dt)))
    mask = torch.zeros(B, S, dtype=torch.bool, device=dev)
    mask[:, :1100] = True
    m4 = mask[:, None, None, :]

    def sdpa():
        k, v = kv()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m4)
    print(f"attn  sdpa-masked   {bench(sdpa):7.1f} us", flush=True)
    print(f"attn  decode_attention (chunk {kn.ATTN_CHUNK}) {bench(lambda: kn.decode_attention(q, *kv(), mask, Dh ** -0.5)):7.1f} us")
    cnt = torch.zeros(B * H, dtype=torch.int32, device=dev)
    t1 = bench(lambda: kn.decode_attention_one_launch(q, *kv(), mask, Dh ** -0.5, cnt))
    print(f"attn  decode_attention_one_launch (chunk {kn.ATTN_CHUNK}) {t1:7.1f} us")
    for chunk in (32, 64, 128):
        for warps in (2, 4, 8):
            nsplit = triton.cdiv(S, chunk)
            m = torch.empty(B * H * nsplit, device=dev)
            l = torch.empty_like(m)
            acc = torch.empty(B * H * nsplit, Dh, device=dev)
            o = torch.empty(B, H, 1, Dh, device=dev, dtype=dt)

            def split():
                k, v = kv()
                kn._decode_attn_split_kernel[(B * H, nsplit)](
                    q, k, v, mask, m, l, acc, S, H, 1, Dh ** -0.5, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                    k.stride(2), mask.stride(0), nsplit, D=Dh, CHUNK=chunk, num_warps=warps)

            def combine():
                kn._decode_attn_combine_kernel[(B * H,)](m, l, acc, o, nsplit, D=Dh,
                                                         SPLITS=triton.next_power_of_2(nsplit), num_warps=warps)
            ts, tc = bench(split), bench(combine)
            print(f"attn  chunk {chunk:3d} warps {warps}: split {ts:6.1f} us + combine {tc:5.1f} us", flush=True)


def sweep_configs(name, label, N, K, n, w, x, g, res, ss, eps, pro, epi):
    """The same launch with explicit configs (no autotuner) over a wider grid; prints the best few and the pinned
    shapes (report)."""
    results = []
    stages = 2  # no effect on these loads: Triton emits no cp.async for them
    for bn, bk, warps in itertools.product((8, 16), (256, 512, 1024), (4, 8)):
        y = torch.empty((1, n), device=x.device, dtype=x.dtype)
        so = torch.empty((triton.cdiv(n, kn.SS_GROUP),), device=x.device, dtype=torch.float32)
        nss = triton.next_power_of_2(ss.numel()) if pro else 1
        if epi == kn.EPILOGUE_RESIDUAL_SS and bn < kn.SS_GROUP:
            continue  # partials need BLOCK_N to be a multiple of SS_GROUP

        def call():
            kn._gemv_fused_kernel.fn[(triton.cdiv(n, bn),)](
                x, w(), y, g, res, ss, so, n, K, ss.numel(), K, eps, PROLOGUE=pro, EPILOGUE=epi, NSS_BLOCK=nss,
                USE_PDL=0, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
        try:
            results.append((bench(call, reps=10), bn, bk, warps))
        except Exception as e:  # out of resources for a config: skip it, say so
            print(f"      {name} {label} BN{bn} BK{bk} w{warps}: {type(e).__name__}", flush=True)
    report(name, label, N * K * 2, results)


def report(name, label, nbytes, results):
    """The four best configs, then the pinned shapes' own figures from the same sweep."""
    results.sort()
    for t, bn, bk, warps in results[:4]:
        print(f"      {name} {label} best {t:7.1f} us {nbytes / t / 1e3:6.0f} GB/s  BN{bn} BK{bk} warps {warps}")
    for t, bn, bk, warps in results:
        if (bn, bk, warps) in ((8, 512, 4), (16, 512, 4), (16, 256, 4), (8, 1024, 8)):
            print(f"      {name} {label} at {t:7.1f} us {nbytes / t / 1e3:6.0f} GB/s  BN{bn} BK{bk} warps {warps}")
    sys.stdout.flush()


def sweep_qkv(x, g, ss, eps):
    """The wqkv GEMV with RoPE and the cache write (Llama-7B: 32 heads of 128, no GQA) over the same grid."""
    dev, dt = x.device, x.dtype
    H, D, S, K = 32, 128, 1200, x.shape[1]
    N = 3 * H * D
    w = rotating(lambda: torch.randn(N, K, device=dev, dtype=dt) * 0.02)
    kc = torch.zeros(1, H, S, D, device=dev, dtype=dt)
    vc = torch.zeros_like(kc)
    cos, sin = torch.rand(D, device=dev, dtype=dt), torch.rand(D, device=dev, dtype=dt)
    pos = torch.tensor([1000], device=dev)
    t = bench(lambda: kn.gemv_rmsnorm_qkv_rope(x, ss, g, w(), eps, cos, sin, kc, vc, pos, H))
    print(f"wqkv  qkv_rope pinned {t:7.1f} us  {N * K * 2 / t / 1e3:6.0f} GB/s  {kn.QKV_ROPE_CONFIG}", flush=True)
    q = torch.empty(1, H * D, device=dev, dtype=dt)
    results = []
    for bn, bk, warps in itertools.product((8, 16, 32), (256, 512), (4, 8)):
        def call():
            kn._gemv_qkv_rope_kernel.fn[(3 * H * (D // bn),)](
                x, w(), q, kc, vc, g, ss, cos, sin, pos, N, K, ss.numel(), K, eps, H, H, kc.stride(1), kc.stride(2),
                D=D, NSS_BLOCK=triton.next_power_of_2(ss.numel()), USE_PDL=0, BLOCK_N=bn, BLOCK_K=bk,
                num_warps=warps, num_stages=2)
        try:
            results.append((bench(call, reps=10), bn, bk, warps))
        except Exception as e:  # out of resources for a config: skip it, say so
            print(f"      wqkv qkv_rope BN{bn} BK{bk} w{warps}: {type(e).__name__}", flush=True)
    report("wqkv", "qkv_rope", N * K * 2, results)


if __name__ == "__main__":
    main()
