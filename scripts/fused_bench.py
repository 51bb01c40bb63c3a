"""Device probe: the fused decode kernels at Llama-7B decode shapes against the plain Triton GEMV, and the
split-K attention (chunk / warps) against masked SDPA. Each call is timed inside a CUDA graph of 10 calls,
weights rotated over 4 copies so L2 never holds them (as in a real step).

  python scripts/fused_bench.py | tee $OUT/fused_bench.log
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
import triton

from llama_fast import kernels as kn


def bench(fn, reps=30):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(10):
            fn()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        g.replay()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) / 10 * 1e3)
    return statistics.median(ts)  # us per call


def rotating(make, n=4):
    items = [make() for _ in range(n)]
    i = [0]

    def nxt():
        i[0] = (i[0] + 1) % n
        return items[i[0]]
    return nxt


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
    for name, (N, K, kinds) in cases.items():
        w = rotating(lambda: torch.randn(N, K, device=dev, dtype=dt) * 0.02)
        for label, xin, pro, epi in kinds:
            n = N // 2 if epi == SW else N
            t = bench(lambda: kn._launch_fused(xin, w(), g, res, ss if pro else xin, eps, pro, epi, n))
            total[label.split("-")[0] if label != "plain" else "plain"] = None
            print(f"{name:5s} {label:13s} {t:7.1f} us  {N * K * 2 / t / 1e3:6.0f} GB/s", flush=True)
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
                kn._decode_attn_split_kernel.fn[(B * H, nsplit)](
                    q, k, v, mask, m, l, acc, S, H, 1, Dh ** -0.5, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                    k.stride(2), mask.stride(0), nsplit, D=Dh, CHUNK=chunk, num_warps=warps)

            def combine():
                kn._decode_attn_combine_kernel[(B * H,)](m, l, acc, o, nsplit, D=Dh,
                                                         SPLITS=triton.next_power_of_2(nsplit), num_warps=warps)
            ts, tc = bench(split), bench(combine)
            print(f"attn  chunk {chunk:3d} warps {warps}: split {ts:6.1f} us + combine {tc:5.1f} us", flush=True)


if __name__ == "__main__":
    main()
