"""Triton kernels (llama_fast/kernels/) against torch references, in Triton's interpreter on the CPU, and their
launch policy (pinned configs, the override hook, PDL modes). Quantized weights (int8 per row, int4 in groups) are
made here by a reference quantizer that follows the weight format of llama_fast/quant.py, and checked against
dequantize-then-matmul.

The CPU torch build ships no Triton: there these tests skip, saying so. Where Triton is installed (a GPU
box, or `pip install triton` beside the CPU build) they run the real kernels' code on CPU tensors."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

CHECK = r"""
import torch, triton
import torch.nn.functional as F
import llama_fast.kernels as kn
from llama_fast.kernels import attention as at, configs, qkv_rope as qr
from llama_fast.kernels.gemv import (EPILOGUE_NONE, EPILOGUE_RESIDUAL_SS, EPILOGUE_SWIGLU, PROLOGUE_NONE,
                                     PROLOGUE_RMSNORM, SS_GROUP, _gemv_fused_kernel)

torch.manual_seed(0)
seen = []  # (form, n, K) of every eager launch that asked the override hook (None: keep the pinned config)
configs.CONFIG_OVERRIDE = lambda form, n, K: seen.append((form, n, K))
dt = getattr(torch, sys.argv[1])
tol = 1e-6 if dt == torch.float32 else 2e-3


def fused(x, w, g, res, ss, eps, prologue, epilogue, N):
    K = x.shape[1]
    y = torch.empty(1, N, dtype=x.dtype)
    ss_out = torch.full((triton.cdiv(N, SS_GROUP),), float("nan"))
    # the row strides (x, y, res, ss in, ss out) 0: one row
    _gemv_fused_kernel.fn[(triton.cdiv(N, 16),)](x, w, y, g, res, ss, ss_out, y, y, N, K, K, ss.numel(), w.stride(0),
                                                     0, eps, 0, 0, y, 0, 0, 0, 0, 0, PROLOGUE=prologue,
                                                     EPILOGUE=epilogue,
                                                     NSS_BLOCK=triton.next_power_of_2(ss.numel()), USE_PDL=False,
                                                     WFMT=0, GROUP=0, RANK=0, WORLD=1, REDUCERS=1, BLOCK_N=16,
                                                     BLOCK_K=256)
    return y, ss_out


def rmsnorm(x, g, eps):  # transformers' LlamaRMSNorm
    xf = x.float()
    return g * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rel(y, ref):
    return ((y.float() - ref).norm() / ref.norm()).item()


for N, K in [(96, 300), (37, 512), (64, 1000)]:  # tails in both N and K
    x = torch.randn(1, K).to(dt)
    g = (1 + 0.1 * torch.randn(K)).to(dt)
    w = (0.05 * torch.randn(N, K)).to(dt)
    w13 = (0.05 * torch.randn(2 * N, K)).to(dt)
    res = torch.randn(1, N).to(dt)
    ss = x.float().pow(2).view(-1, 4 if K % 8 else 8).sum(-1)  # any grouping: only the sum matters
    NONE, RES, SWI, RMS = PROLOGUE_NONE, EPILOGUE_RESIDUAL_SS, EPILOGUE_SWIGLU, PROLOGUE_RMSNORM
    y_res, ss_res = fused(x, w, x, res, x, 0.0, NONE, RES, N)
    ref_res = (res.float() + (x.float() @ w.float().T).to(dt).float()).to(dt)
    gate, up = (rmsnorm(x, g, 1e-5).float() @ w13.float().T).to(dt).chunk(2, dim=-1)
    checks = {
        "gemv": (fused(x, w, x, x, x, 0.0, NONE, EPILOGUE_NONE, N)[0], x.float() @ w.float().T),
        "rmsnorm": (fused(x, w, g, x, ss, 1e-5, RMS, EPILOGUE_NONE, N)[0], rmsnorm(x, g, 1e-5).float() @ w.float().T),
        "residual": (y_res, ref_res.float()),
        "ss_partials": (ss_res, F.pad(ref_res.float().pow(2), (0, 8 * ss_res.numel() - N)).view(-1, 8).sum(-1)),
        "swiglu": (fused(x, w13, g, x, ss, 1e-5, RMS, SWI, N)[0], (F.silu(gate.float()).to(dt) * up).float()),
    }
    # the public ops: eager launches take the pinned configs (configs.pinned_config), not the autotuner's
    checks["op gemv"] = (kn.gemv(x, w), checks["gemv"][1])
    checks["op residual"] = (kn.gemv_residual_ss(x, w, res)[0], ref_res.float())
    checks["op swiglu"] = (kn.gemv_rmsnorm_swiglu(x, ss, g, w13, 1e-5), checks["swiglu"][1])
    checks["op rmsnorm"] = (kn.gemv_rmsnorm(x, ss, g, w, 1e-5), checks["rmsnorm"][1])
    for name, (y, ref) in checks.items():
        err = rel(y, ref)
        assert err < tol, (name, N, K, err)
        print(name, N, K, f"{err:.1e}")
    assert torch.allclose(kn.ss_partials(x).sum(), x.float().pow(2).sum()) if K % 8 == 0 else True
    if K % 8 == 0:  # the one-launch partials of a tensor-parallel all-reduce's output: the same groups of 8
        torch.testing.assert_close(kn.row_ss_partials(x), kn.ss_partials(x), rtol=1e-6, atol=1e-6)
        # from a float32 all-reduce buffer: the row rounded to the model dtype, the partials of the rounded row
        wide = x.float() + 1e-4 * torch.randn(1, K)
        y, ss_n = kn.row_narrow_ss(wide, x)
        assert y.dtype == dt and torch.equal(y, wide.to(dt)), (N, K)
        torch.testing.assert_close(ss_n, kn.ss_partials(wide.to(dt)), rtol=1e-6, atol=1e-6)
for H, Hkv, D, K, S, pos in [(4, 2, 32, 300, 40, 17), (2, 2, 64, 512, 8, 0)]:  # GQA with a K tail; MHA
    N = (H + 2 * Hkv) * D
    x = torch.randn(1, K).to(dt)
    g = (1 + 0.1 * torch.randn(K)).to(dt)
    w = (0.05 * torch.randn(N, K)).to(dt)
    ss = x.float().pow(2).view(-1, 4).sum(-1)
    ang = torch.rand(D // 2) * 3
    cos = torch.cat([ang.cos(), ang.cos()]).to(dt)
    sin = torch.cat([-ang.sin(), ang.sin()]).to(dt)  # the signed table
    kc, vc = torch.zeros(1, Hkv, S, D, dtype=dt), torch.zeros(1, Hkv, S, D, dtype=dt)
    q = torch.empty(1, H * D, dtype=dt)
    qr._gemv_qkv_rope_kernel.fn[((H + 2 * Hkv) * (D // 16),)](
        x, w, q, kc, vc, g, ss, cos, sin, torch.tensor([pos]), q, q, N, K, K, ss.numel(), w.stride(0), 0, 1e-5,
        H, Hkv, kc.stride(1), kc.stride(2), 0, 0, 0, 0, 0, D=D, NSS_BLOCK=triton.next_power_of_2(ss.numel()),
        USE_PDL=False, WFMT=0, GROUP=0, BLOCK_N=16, BLOCK_K=256)  # the five row strides 0: one row
    qkv = (rmsnorm(x, g, 1e-5).float() @ w.float().T).to(dt)
    rq, rk, rv = qkv.split([H * D, Hkv * D, Hkv * D], dim=-1)

    def rope(t):  # (n, D) in dt, eager fp16 arithmetic as the model's apply_rope
        swapped = t.unflatten(-1, (2, -1)).flip(-2).flatten(-2)
        return t * cos + swapped * sin
    checks = {"qkv_rope q": (q, rope(rq.view(H, D)).reshape(1, -1).float()),
              "qkv_rope k": (kc[0, :, pos], rope(rk.view(Hkv, D)).float()),
              "qkv_rope v": (vc[0, :, pos], rv.view(Hkv, D).float())}
    kc2, vc2 = torch.zeros_like(kc), torch.zeros_like(vc)
    q2 = kn.gemv_rmsnorm_qkv_rope(x, ss, g, w, 1e-5, cos, sin, kc2, vc2, torch.tensor([pos]), H)
    assert torch.equal(q2, q) and torch.equal(kc2, kc) and torch.equal(vc2, vc)  # the op, pinned config
    for name, (y, ref) in checks.items():
        err = rel(y, ref)
        assert err < tol, (name, H, Hkv, D, err)
        print(name, H, Hkv, D, f"{err:.1e}")
    others = torch.ones(S, dtype=torch.bool)
    others[pos] = False
    assert not kc[0, :, others].any() and not vc[0, :, others].any()  # only slot pos was written
for B, H, Hkv, S, D, pos, pad in [(1, 4, 4, 300, 64, 257, [0]), (2, 8, 2, 200, 32, 130, [0, 17]),
                                  (1, 2, 1, 64, 16, 0, [0]), (3, 2, 2, 150, 32, 140, [0, 9, 100])]:
    # MHA over 3 chunks; GQA + left pad; one key; MHA batch 3 + left pad
    q, k, v = torch.randn(B, H, 1, D).to(dt), torch.randn(B, Hkv, S, D).to(dt), torch.randn(B, Hkv, S, D).to(dt)
    slots = torch.arange(S)
    mask = (slots[None, :] <= pos) & (slots[None, :] >= torch.tensor(pad)[:, None])  # (B, S)
    nsplit = triton.cdiv(S, configs.ATTN_CHUNK)
    m, l, acc = torch.empty(B * H * nsplit), torch.empty(B * H * nsplit), torch.empty(B * H * nsplit, D)
    o = torch.empty(B, H, 1, D, dtype=dt)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask[:, None, None, :],
                                         enable_gqa=H != Hkv)
    outs = []
    for newest in (False, True):  # True: the PDL form's re-read of each chunk's newest attended row
        o = torch.empty(B, H, 1, D, dtype=dt)
        at._decode_attn_split_kernel[(B * H, nsplit)](q, k, v, mask, m, l, acc, S, H, H // Hkv, D ** -0.5,
                                                      q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                                                      k.stride(2), mask.stride(0), nsplit, D=D,
                                                      CHUNK=configs.ATTN_CHUNK, USE_PDL=False,
                                                      NEWEST_AFTER_WAIT=newest)
        at._decode_attn_combine_kernel[(B * H,)](m, l, acc, o, nsplit, D=D, SPLITS=triton.next_power_of_2(nsplit),
                                                 USE_PDL=False)
        err = rel(o, ref)
        assert err < tol, ("attention", newest, B, H, Hkv, S, err)
        print("attention", newest, B, H, Hkv, S, f"{err:.1e}")
        outs.append(o)
        if H != Hkv:  # GQA on the tensor cores: a program per KV head, its query heads the rows of one product
            og = torch.empty(B, H, 1, D, dtype=dt)
            m.fill_(float("nan"))
            at._decode_attn_split_gqa_kernel[(B * Hkv, nsplit)](
                q, k, v, mask, m, l, acc, S, H, H // Hkv, D ** -0.5, q.stride(0), q.stride(1), k.stride(0),
                k.stride(1), k.stride(2), mask.stride(0), nsplit, D=D, CHUNK=configs.ATTN_CHUNK, QP=16, USE_PDL=False,
                NEWEST_AFTER_WAIT=newest, PRECISION="ieee")
            at._decode_attn_combine_kernel[(B * H,)](m, l, acc, og, nsplit, D=D,
                                                     SPLITS=triton.next_power_of_2(nsplit), USE_PDL=False)
            err = rel(og, ref)
            assert err < tol, ("attention gqa dot", newest, B, H, Hkv, S, err)
            print("attention gqa dot", newest, B, H, Hkv, S, f"{err:.1e}")
        # the span form of the tensor-core kernel (a multi-head model: groups of one query head): spans of two
        # chunks (the newest slot in the last), an online softmax over them
        og = torch.empty(B, H, 1, D, dtype=dt)
        span = 2 * configs.ATTN_CHUNK
        ns = triton.cdiv(S, span)
        m.fill_(float("nan"))
        at._decode_attn_span_gqa_kernel[(B * Hkv, ns)](
            q, k, v, mask, m, l, acc, S, H, H // Hkv, D ** -0.5, q.stride(0), q.stride(1), k.stride(0),
            k.stride(1), k.stride(2), mask.stride(0), ns, span, D=D, CHUNK=configs.ATTN_CHUNK, QP=16,
            USE_PDL=False, NEWEST_AFTER_WAIT=newest, PRECISION="ieee", STAGES=2)
        at._decode_attn_combine_kernel[(B * H,)](m, l, acc, og, ns, D=D, SPLITS=triton.next_power_of_2(ns),
                                                 USE_PDL=False)
        err = rel(og, ref)
        assert err < tol, ("attention span", newest, B, H, Hkv, S, err)
        print("attention span", newest, B, H, Hkv, S, f"{err:.1e}")
    assert torch.equal(outs[0], outs[1])
    cnt = torch.zeros(B * H, dtype=torch.int32)
    for call in range(2):  # the one-launch form leaves its counters at zero for the next call
        o1 = torch.empty(B, H, 1, D, dtype=dt)
        at._decode_attn_one_launch_kernel[(B * H, nsplit)](
            q, k, v, mask, m, l, acc, cnt, o1, S, H, H // Hkv, D ** -0.5, q.stride(0), q.stride(1), k.stride(0),
            k.stride(1), k.stride(2), mask.stride(0), nsplit, D=D, CHUNK=configs.ATTN_CHUNK,
            SPLITS=triton.next_power_of_2(nsplit), USE_PDL=False, NEWEST_AFTER_WAIT=call == 1)
        assert not cnt.any() and torch.equal(o1, o), ("attention one launch", call, B, H, Hkv, S)
    print("attention one launch", B, H, Hkv, S, "== two launches")
    if H != Hkv:  # the op with configs.ATTN_GQA_DOT flipped: the other kernel behind decode_attention
        configs.ATTN_GQA_DOT = not configs.ATTN_GQA_DOT
        o3 = kn.decode_attention(q, k, v, mask, D ** -0.5, 2)
        configs.ATTN_GQA_DOT = not configs.ATTN_GQA_DOT
        err = rel(o3, ref)
        assert err < tol, ("op attention, GQA_DOT flipped", B, H, Hkv, S, err)
    # above batch 1, the op taking the span form (a config with WAVES): spans of 32-slot tiles over the
    # interpreter's nominal 8 SMs (batch 1 keeps the one-chunk kernels)
    hook = configs.CONFIG_OVERRIDE
    configs.CONFIG_OVERRIDE = lambda form, n, K: {"CHUNK": 32, "num_warps": 4, "WAVES": 1.5, "STAGES": 2}
    kernel, grid = at.split_call(q, k, v, mask, D ** -0.5, 0)[:2]
    spanned = kernel.fn.__name__ == "_decode_attn_span_gqa_kernel"
    assert spanned == (B > 1) and (grid == (B * Hkv, at.span_splits(B * Hkv, S, 8, 1.5, 32)[0]) or not spanned)
    o4 = kn.decode_attention(q, k, v, mask, D ** -0.5, 2)
    configs.CONFIG_OVERRIDE = hook
    err = rel(o4, ref)
    assert err < tol, ("op attention, span config", B, H, Hkv, S, err)
    print("op attention span config", B, H, Hkv, S, spanned, f"{err:.1e}")
    # the public ops: eager launches take configs.ATTN_EAGER_CONFIG (128-slot tiles), PDL asked for and not applied
    for name, o2 in (("op attention", kn.decode_attention(q, k, v, mask, D ** -0.5, 2)),
                     ("op attention one launch", kn.decode_attention_one_launch(q, k, v, mask, D ** -0.5, cnt, 2))):
        err = rel(o2, ref)
        assert err < tol and not cnt.any(), (name, B, H, Hkv, S, err)
        print(name, B, H, Hkv, S, f"{err:.1e}")
# every op asked the override hook for its form's config, with its output rows and input width
assert {f for f, _, _ in seen} == {"gemv", "rmsnorm", "residual", "swiglu", "qkv_rope", "attention"}, seen
assert ("swiglu", 96, 300) in seen and ("residual", 37, 512) in seen and ("attention", 300, 64) in seen, seen
print("ok")
"""


U = 2.0 ** -24  # fp32 unit roundoff


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(qweight int8 (N, K), scales (N,)) of w (N, K): symmetric, one scale per row, round to nearest."""
    scales = w.abs().amax(dim=1) / 127
    q = torch.round(w / torch.where(scales > 0, scales, 1)[:, None]).clamp(-127, 127)
    return q.to(torch.int8), scales


def quantize_int4(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(qweight uint8 (N, K / 2), scales, offsets (N, K / group)) of w (N, K): per group along K, round to nearest
    between the group's min and max (scale = (max - min) / 15, offset = min; a scale-0 group gives q = 0); byte j
    of a row holds element 2j in its low nibble and 2j + 1 in its high nibble."""
    N, K = w.shape
    wg = w.reshape(N, K // group, group)
    lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
    scales = (hi - lo) / 15
    q = torch.round((wg - lo[..., None]) / torch.where(scales > 0, scales, 1)[..., None]).clamp(0, 15)
    q = q.masked_fill((scales == 0)[..., None], 0).to(torch.uint8).reshape(N, K)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous(), scales, lo


def int4_values(qweight: torch.Tensor) -> torch.Tensor:
    """The (N, K) values 0..15 of a packed int4 qweight."""
    return torch.stack([qweight & 15, qweight >> 4], dim=-1).reshape(qweight.shape[0], -1)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None = None,
               group: int = 0) -> torch.Tensor:
    """The float64 weight (N, K) of either format: q * scale (+ offset per group)."""
    if offsets is None:
        return qweight.double() * scales.double()[:, None]
    q = int4_values(qweight).double()
    N, K = q.shape
    w = q.view(N, K // group, group) * scales.double()[..., None] + offsets.double()[..., None]
    return w.view(N, K)


def fp32_magnitude(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                   offsets: torch.Tensor | None = None, group: int = 0) -> torch.Tensor:
    """Per output row (N,), the sum of the magnitudes of what the quantized GEMV adds in fp32 for x (K,)
    (kernels/dequant.py): int8 |s| (sum_k u_k |x_k| + 128 sum_k |x_k|) with u = q + 128; int4, per group,
    |s| sum_k q_k |x_k| + |o| sum_k |x_k|. Its rounding errors stay within a few units of U * sqrt(K) * this
    (random-sign roundings), far below one quantization step."""
    ax = x.double().abs().reshape(-1)
    if offsets is None:
        u = qweight.double() + 128
        return scales.double().abs() * ((u + 128) @ ax)
    K = ax.numel()
    per = (int4_values(qweight).double() * ax).view(qweight.shape[0], K // group, group).sum(-1)  # (N, groups)
    axg = ax.view(K // group, group).sum(-1)
    return (scales.double().abs() * per + offsets.double().abs() * axg).sum(-1)


QCHECK = r"""
import sys
import torch, triton
import torch.nn.functional as F
import llama_fast.kernels as kn
from llama_fast.kernels import configs
from test_kernels import U, dequantize, fp32_magnitude, quantize_int4, quantize_int8

torch.manual_seed(0)
mode = sys.argv[1]
# loop: small tiles, so K (384) spans a whole K tile and a tail and every launch runs the kernels' loops;
# pinned: the ops' pinned configs (kernels/configs.py QUANT_CONFIGS, one masked K tile here);
# persist: the GEMV forms as persistent programs (PERSIST), two of them, so each walks 2-3 row blocks
SMALL = {"BLOCK_N": 8, "BLOCK_K": 256, "num_warps": 4, "num_stages": 1}
SMALL_QKV = {**SMALL, "BLOCK_N": 16}
PERSISTENT = {**SMALL, "BLOCK_K": 512, "PERSIST": 1}
PERSISTENT_QKV = {**PERSISTENT, "BLOCK_N": 16}
qkv_persist = [mode == "persist"]  # the qkv+RoPE form persistent too (switched off for one comparison below)
seen = []
if mode == "persist":  # both launchers' grids (gemv.persistent_grid); the package's `gemv` is the op: the module
    sys.modules["llama_fast.kernels.gemv"].sm_count = lambda device: 2


def override(form, n, K):
    seen.append(form)
    if mode == "pinned":
        return None
    if form.startswith("qkv_rope"):
        return PERSISTENT_QKV if qkv_persist[0] else SMALL_QKV
    return PERSISTENT if mode == "persist" else SMALL


configs.CONFIG_OVERRIDE = override
worst = {}


def check(name, y, ref, atol):
    # |y - ref| within atol everywhere: ref in float64 from the dequantized weights, atol from fp32 rounding
    err = (y.double().reshape(ref.shape) - ref).abs()
    ratio = (err / atol).max().item()
    worst[name] = max(worst.get(name, 0.0), ratio)
    assert ratio <= 1, (name, ratio, err.max().item())


def rmsnorm(x, g, eps):  # transformers' LlamaRMSNorm (fp32 here)
    return g * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def quantize(w, fmt):
    if fmt == "int8":
        q, s = quantize_int8(w)
        return q, dict(scales=s)
    group = int(fmt[len("int4:g"):])
    q, s, o = quantize_int4(w, group)
    return q, dict(scales=s, offsets=o, group=group)


def proj(x, q, quant):
    # (reference projection (N,), its fp32 tolerance (N,)) of x (K,) by a quantized weight
    ref = dequantize(q, **quant) @ x.double().reshape(-1)
    return ref, 2 * x.numel() ** 0.5 * U * fp32_magnitude(x, q, **quant)


N, K, eps = 37, 384, 1e-5  # odd N (a partial row block); K a multiple of every group and a partial K tile
x = torch.randn(1, K)
g = 1 + 0.1 * torch.randn(K)
res = torch.randn(1, N)
ss = x.pow(2).view(-1, 8).sum(-1)
xn = rmsnorm(x, g, eps)
for fmt in ("int8", "int4:g32", "int4:g64", "int4:g128"):
    q, quant = quantize(0.05 * torch.randn(N, K), fmt)
    q13, quant13 = quantize(0.05 * torch.randn(2 * N, K), fmt)
    ref, tol = proj(x, q, quant)
    check(f"gemv {fmt}", kn.gemv(x, q, **quant), ref, tol)
    rref, rtol = proj(xn, q, quant)
    check(f"rmsnorm {fmt}", kn.gemv_rmsnorm(x, ss, g, q, eps, **quant), rref, rtol)
    y, part = kn.gemv_residual_ss(x, q, res, **quant)
    yref = res.double().reshape(-1) + ref
    ytol = tol + U * yref.abs()
    check(f"residual {fmt}", y, yref, ytol)
    pad = 8 * part.numel() - N
    check(f"residual partials {fmt}", part, F.pad(yref.pow(2), (0, pad)).view(-1, 8).sum(-1),
          F.pad(2 * yref.abs() * ytol + 8 * U * yref.pow(2), (0, pad)).view(-1, 8).sum(-1))
    gu, gutol = proj(xn, q13, quant13)
    gate, up, gtol, utol = gu[:N], gu[N:], gutol[:N], gutol[N:]
    act = F.silu(gate)
    check(f"swiglu {fmt}", kn.gemv_rmsnorm_swiglu(x, ss, g, q13, eps, **quant13), act * up,
          1.1 * gtol * up.abs() + act.abs() * utol + 8 * U * (act * up).abs())
    if fmt == "int4:g32":  # the tolerance catches a single weight one quantization step off
        k = int(x.abs().argmax())
        bad = q.clone()
        bad[0, k // 2] ^= 1 << (4 * (k % 2))
        err = (kn.gemv(x, bad, **quant).double().reshape(-1) - ref).abs()
        assert err[0] > tol[0] and (err[1:] <= tol[1:]).all(), (err[0].item(), tol[0].item())
# the qkv GEMV with RoPE and the cache write, GQA (4 query heads over 2 kv heads)
H, Hkv, D, S, pos = 4, 2, 32, 24, 13
Nq = (H + 2 * Hkv) * D
ang = torch.rand(D // 2) * 3
cos = torch.cat([ang.cos(), ang.cos()])
sin = torch.cat([-ang.sin(), ang.sin()])  # the signed table
c1, c2, s1, s2 = cos[:D // 2].double(), cos[D // 2:].double(), sin[:D // 2].double(), sin[D // 2:].double()
for fmt in ("int8", "int4:g32", "int4:g64", "int4:g128"):
    q, quant = quantize(0.05 * torch.randn(Nq, K), fmt)
    kc, vc = torch.zeros(1, Hkv, S, D), torch.zeros(1, Hkv, S, D)
    qout = kn.gemv_rmsnorm_qkv_rope(x, ss, g, q, eps, cos, sin, kc, vc, torch.tensor([pos]), H, **quant)
    p, ptol = proj(xn, q, quant)
    p, ptol = p.view(-1, D), ptol.view(-1, D)  # (H + 2 Hkv, D): heads of q, then k, then v
    a, b, ta, tb = p[:, :D // 2], p[:, D // 2:], ptol[:, :D // 2], ptol[:, D // 2:]
    rot = torch.cat([a * c1 + b * s1, b * c2 + a * s2], dim=-1)
    rtol = torch.cat([c1.abs() * ta + s1.abs() * tb + 4 * U * (a * c1).abs() + 4 * U * (b * s1).abs(),
                      c2.abs() * tb + s2.abs() * ta + 4 * U * (b * c2).abs() + 4 * U * (a * s2).abs()], dim=-1)
    check(f"qkv_rope q {fmt}", qout.view(H, D), rot[:H], rtol[:H])
    check(f"qkv_rope k {fmt}", kc[0, :, pos], rot[H:H + Hkv], rtol[H:H + Hkv])
    check(f"qkv_rope v {fmt}", vc[0, :, pos], p[H + Hkv:], ptol[H + Hkv:])
    others = torch.ones(S, dtype=torch.bool)
    others[pos] = False
    assert not kc[0, :, others].any() and not vc[0, :, others].any()  # only slot pos was written
if mode == "persist":  # model-dtype weights: the persistent qkv+RoPE form against the one-program-a-block form
    wq = 0.05 * torch.randn(Nq, K)
    outs = []
    for persistent in (True, False):
        qkv_persist[0] = persistent
        kc, vc = torch.zeros(1, Hkv, S, D), torch.zeros(1, Hkv, S, D)
        outs.append((kn.gemv_rmsnorm_qkv_rope(x, ss, g, wq, eps, cos, sin, kc, vc, torch.tensor([pos]), H), kc, vc))
    for a, b in zip(*outs):
        assert (a - b).abs().max() <= 1e-6 * b.abs().max() and b.abs().max() > 0
    qkv_persist[0] = True
# fp16 activations, scales and offsets (the model dtype): the rounding steps of the fp16 path
xh, resh, gh = x.half(), res.half(), g.half()
for fmt in ("int8", "int4:g128"):
    q, quant = quantize(0.05 * torch.randn(N, K), fmt)
    quant = {k: v.half() if torch.is_tensor(v) else v for k, v in quant.items()}
    ref = dequantize(q, **quant) @ xh.double().reshape(-1)
    y = kn.gemv_residual_ss(xh, q, resh, **quant)[0]
    yref = resh.double().reshape(-1) + ref.half().double()
    err = ((y.double().reshape(-1) - yref).norm() / yref.norm()).item()
    assert err < 2e-3, (fmt, err)  # fp16 rounding of the projection and of the sum
    print(f"fp16 residual {fmt}: relative error {err:.1e}")
dense = {"qkv_rope"} if mode == "persist" else set()  # the model-dtype forms run above and here
if mode == "persist":  # the model-dtype weights through the persistent forms too (fp32: rounding-level errors)
    w, w13 = 0.05 * torch.randn(N, K), 0.05 * torch.randn(2 * N, K)
    ref, rref, guref = (w.double() @ x.double().reshape(-1), w.double() @ xn.double().reshape(-1),
                        w13.double() @ xn.double().reshape(-1))
    for name, y, r in [("gemv", kn.gemv(x, w), ref), ("rmsnorm", kn.gemv_rmsnorm(x, ss, g, w, eps), rref),
                       ("residual", kn.gemv_residual_ss(x, w, res)[0], res.double().reshape(-1) + ref),
                       ("swiglu", kn.gemv_rmsnorm_swiglu(x, ss, g, w13, eps), F.silu(guref[:N]) * guref[N:])]:
        err = ((y.double().reshape(-1) - r).norm() / r.norm()).item()
        assert err < 1e-6, (name, err)
        dense.add(name)
for name, ratio in worst.items():
    print(f"{name}: worst error / tolerance {ratio:.2e}")
assert set(seen) == {"gemv_int8", "rmsnorm_int8", "residual_int8", "swiglu_int8", "qkv_rope_int8", "gemv_int4",
                     "rmsnorm_int4", "residual_int4", "swiglu_int4", "qkv_rope_int4"} | dense, set(seen)
print("ok")
"""


# Triton 3.6's interpreter (the device stack's) hands a scalar kernel argument over as a 1-element array, and
# `range(BLOCK_K, K, BLOCK_K)` then fails under NumPy >= 2.4 ("only 0-dimensional arrays can be converted to
# Python scalars"); Triton 3.9 passes 0-d values. This kernel asks the installed pair directly.
LOOP_PROBE = r"""
import torch, triton, triton.language as tl


@triton.jit
def loop(y_ptr, n, STEP: tl.constexpr):
    acc = 0
    for i in range(STEP, n, STEP):
        acc += i
    tl.store(y_ptr, acc)


y = torch.zeros(1, dtype=torch.int32)
try:
    loop[(1,)](y, 10, STEP=2)
except Exception as e:  # the interpreter's own failure, reported to the test as a skip reason
    print(f"interpreter cannot loop over a scalar argument: {type(e).__name__}: {str(e)[:200]}")
else:
    print("ok" if int(y) == 2 + 4 + 6 + 8 else f"wrong loop result {int(y)}")
"""


@pytest.fixture(scope="module")
def interpreter_env() -> dict:
    """The environment that runs the kernels in Triton's interpreter, once LOOP_PROBE has shown that the
    installed interpreter can run them (asked once per module, not per dtype)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    probe = subprocess.run([sys.executable, "-c", LOOP_PROBE], env=env, capture_output=True, text=True,
                           timeout=120).stdout.strip()
    if probe.startswith("interpreter cannot"):
        import triton

        pytest.skip(f"Triton {triton.__version__}'s interpreter here: {probe} (the kernels themselves run on the "
                    "GPU in tests/test_compile.py)")
    assert probe == "ok", probe
    return env


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (the CPU torch build has none); the kernels run in Triton's "
                           "interpreter wherever triton is installed, and for real on a GPU")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_kernels_match_torch_in_the_interpreter(dtype, interpreter_env):
    env = interpreter_env
    r = subprocess.run([sys.executable, "-c", "import sys\n" + CHECK, dtype], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (the CPU torch build has none); the kernels run in Triton's "
                           "interpreter wherever triton is installed, and for real on a GPU")
@pytest.mark.parametrize("mode", ["loop", "pinned", "persist"])
def test_quantized_kernels_match_dequantize_then_matmul(mode, interpreter_env):
    """Every fused op with int8 and int4 (groups 32, 64, 128) weights, fp32 activations, against the float64
    product with the dequantized weight: the plain GEMV, the RMSNorm prologue, the residual and SwiGLU
    epilogues and the qkv GEMV with RoPE and the GQA cache write; small tiles (the loops), the pinned ones, and
    the persistent GEMV forms (with model-dtype weights as well)."""
    env = {**interpreter_env, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    r = subprocess.run([sys.executable, "-c", QCHECK, mode], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


DEQUANT_CHECK = r"""
import torch
from llama_fast.kernels.dequant import dequantize_weight
from llama_fast.quant import QuantScheme, dequantize_int4, dequantize_int8, quantize_tensor


def same(got, ref):
    # bit for bit, except bf16: Triton's interpreter (numpy has no bf16) truncates fp32 to bf16 where the GPU and
    # torch round to nearest, so there the check is one bf16 ulp (2 ** -7 relative)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    if ref.dtype != torch.bfloat16:
        return torch.equal(got, ref)
    return bool(((got.float() - ref.float()).abs() <= ref.float().abs() * 2 ** -7).all())


torch.manual_seed(0)
for dt in (torch.float32, torch.float16, torch.bfloat16):
    w = torch.randn(40, 576).to(dt)  # 40 rows: a partial row tile; 576 = 288 int4 bytes: a partial byte tile
    d = quantize_tensor(w, QuantScheme(8, None))
    assert same(dequantize_weight(d["qweight"], d["scales"], None, 0),
                dequantize_int8(d["qweight"], d["scales"])), ("int8", dt)
    for g in (32, 64):
        d = quantize_tensor(w, QuantScheme(4, g))
        assert same(dequantize_weight(d["qweight"], d["scales"], d["offsets"], g),
                    dequantize_int4(d["qweight"], d["scales"], d["offsets"])), ("int4", g, dt)
for bad in [(d["qweight"], d["scales"], d["offsets"], 128), (d["qweight"], d["scales"], None, 0)]:
    try:
        dequantize_weight(*bad)
    except ValueError:
        pass
    else:
        raise AssertionError("a mismatched scheme was accepted")
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (the CPU torch build has none); the kernels run in Triton's "
                           "interpreter wherever triton is installed, and for real on a GPU")
def test_dequantize_weight_matches_quant_py(interpreter_env):
    """The prefill's whole-weight dequantization kernel gives quant.py's torch dequantization (int8, int4 groups
    32 / 64; fp32 and fp16 bit for bit, bf16 to an ulp; tails in rows and bytes) and refuses a mismatched scheme."""
    r = subprocess.run([sys.executable, "-c", DEQUANT_CHECK], env=interpreter_env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def test_reference_quantizer_follows_the_weight_format():
    """The test-side quantizer writes what llama_fast/quant.py's format says (nibble order, scale and offset,
    scale-0 groups, int8 range): the kernels' checks above rest on it."""
    w = torch.tensor([[0.0, 1.5, 0.7, 0.3] * 8, [2.0] * 32])  # group 32: row 1 is constant (scale 0)
    q, s, o = quantize_int4(w, 32)
    assert q.dtype == torch.uint8 and q.shape == (2, 16) and s.shape == o.shape == (2, 1)
    assert torch.allclose(s[0], torch.tensor(0.1)) and o[0, 0] == 0 and s[1, 0] == 0 and o[1, 0] == 2
    assert q[0, 0] == 0 | (15 << 4) and q[0, 1] == 7 | (3 << 4)  # elements 0, 1 | 2, 3: low nibble first
    assert not q[1].any()
    assert torch.allclose(dequantize(q, s, o, 32), w.double(), atol=1e-6)
    w = torch.randn(5, 64)
    for group in (32, 64):
        q, s, o = quantize_int4(w, group)
        assert (dequantize(q, s, o, group) - w.double()).abs().max() <= s.max() / 2 + 1e-6  # round to nearest
    q8, s8 = quantize_int8(w)
    assert q8.dtype == torch.int8 and q8.abs().max() == 127 and s8.shape == (5,)
    assert (q8.double().abs().amax(1) == 127).all()
    assert (dequantize(q8, s8) - w.double()).abs().max() <= s8.max() / 2 + 1e-6
    from llama_fast import quant  # the product's quantizer writes the same tensors (fp32 weights)

    assert all(torch.equal(a, b) for a, b in zip(quant.quantize_int8(w), (q8, s8)))
    assert all(torch.equal(a, b) for a, b in zip(quant.quantize_int4(w, 32), quantize_int4(w, 32)))


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed (the CPU torch build has none): the launch "
                                         "policy lives beside the kernels")


@needs_triton
def test_pinned_configs_and_the_override_hook(monkeypatch):
    """Eager launches take one pinned config per form; CONFIG_OVERRIDE replaces it for the forms it answers;
    inside torch.compile or with LLAMA_FAST_GEMV_AUTOTUNE=1 the kernels' own search applies (None)."""
    from llama_fast.kernels import configs

    monkeypatch.delenv("LLAMA_FAST_GEMV_AUTOTUNE", raising=False)
    monkeypatch.setattr(configs, "CONFIG_OVERRIDE", None)
    assert configs.pinned_config("residual", 4096, 11008) == {"BLOCK_N": 8, "BLOCK_K": 1024, "num_warps": 8,
                                                              "num_stages": 3}
    assert configs.pinned_config("swiglu", 11008, 4096)["num_stages"] == 2
    assert configs.pinned_config("gemv", 12288, 4096)["BLOCK_N"] == 8
    assert configs.pinned_config("rmsnorm", 32000, 4096)["BLOCK_N"] == 16  # the head
    assert configs.pinned_config("qkv_rope", 12288, 4096) == configs.QKV_ROPE_CONFIG
    assert configs.pinned_config("attention", 1200, 128) == configs.ATTN_EAGER_CONFIG
    # every pinned GEMV tile makes whole sum-of-squares groups (the residual epilogue writes one per 8 rows)
    for form in ("gemv", "rmsnorm", "residual", "swiglu"):
        for n in (4096, 11008, 32000):
            assert configs.pinned_config(form, n, 4096)["BLOCK_N"] % 8 == 0

    wide = {"BLOCK_N": 16, "BLOCK_K": 256, "num_warps": 4, "num_stages": 2}
    asked = []

    def override(form, n, K):
        asked.append((form, n, K))
        return wide if (form, K) == ("residual", 4096) else None

    monkeypatch.setattr(configs, "CONFIG_OVERRIDE", override)
    assert configs.pinned_config("residual", 4096, 4096) == wide
    assert configs.pinned_config("residual", 4096, 11008)["BLOCK_K"] == 1024  # not answered: pinned
    assert configs.pinned_config("attention", 1200, 128) == configs.ATTN_EAGER_CONFIG
    assert asked == [("residual", 4096, 4096), ("residual", 4096, 11008), ("attention", 1200, 128)]

    monkeypatch.setenv("LLAMA_FAST_GEMV_AUTOTUNE", "1")
    assert configs.pinned_config("residual", 4096, 4096) is None
    monkeypatch.delenv("LLAMA_FAST_GEMV_AUTOTUNE")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert configs.pinned_config("swiglu", 11008, 4096) is None
    from llama_fast.kernels.attention import _attn_config

    assert _attn_config(1200, 128, 32, 32) == (configs.ATTN_CHUNK, configs.ATTN_COMPILED_WARPS)
    assert _attn_config(1200, 128, 32, 8, B=8) == (configs.ATTN_CHUNK, configs.ATTN_COMPILED_WARPS)
    from llama_fast.kernels.attention import span_config

    assert span_config(1200, 128, 32, 8, 8, 132) is None  # the compiled block keeps the one-chunk kernels


def test_batched_attention_configs(monkeypatch):
    """Batches above 1 launched eagerly (the kernels-only step): the tensor-core GQA form takes its span form
    (ATTN_GQA_SPAN_CONFIG) where each span holds ATTN_SPAN_MIN_TILES tiles at the batch and SM count, else its one-chunk
    config (ATTN_GQA_EAGER_CONFIG); a multi-head model and the per-query-head GQA form torch.compile's (ATTN_CHUNK,
    ATTN_COMPILED_WARPS); a trial's override wins over all; the SM count is required."""
    from llama_fast.kernels import configs
    from llama_fast.kernels.attention import _attn_config, span_config, span_splits

    monkeypatch.setattr(configs, "CONFIG_OVERRIDE", None)
    gqa = (configs.ATTN_GQA_EAGER_CONFIG["CHUNK"], configs.ATTN_GQA_EAGER_CONFIG["num_warps"])
    span = configs.ATTN_GQA_SPAN_CONFIG
    compiled = (configs.ATTN_CHUNK, configs.ATTN_COMPILED_WARPS)
    assert gqa != compiled
    # Llama-3-8B (32 query heads, 8 KV heads, 1200 slots) on 132 SMs: batch 8 spans of 3 tiles (7 a row, 448
    # programs), batch 16 of 5 (4 a row); batch 4 (2 tiles), 3 and 2 (1) keep the one-chunk launch
    assert configs.ATTN_SPAN_MIN_TILES == 3
    assert span_splits(8 * 8, 1200, 132, span["WAVES"], span["CHUNK"]) == (7, 192)
    assert span_splits(16 * 8, 1200, 132, span["WAVES"], span["CHUNK"]) == (4, 320)
    assert span_splits(4 * 8, 1200, 132, span["WAVES"], span["CHUNK"]) == (10, 128)
    for B, spanned in ((2, False), (3, False), (4, False), (8, True), (16, True)):
        want = (span["CHUNK"], span["num_warps"]) if spanned else gqa
        assert _attn_config(1200, 128, 32, 8, B=B, sms=132) == want, B
        assert span_config(1200, 128, 32, 8, B, 132) == ((span["WAVES"], span["STAGES"]) if spanned else None), B
    assert span_config(1200, 128, 32, 8, 1, 132) is None  # batch 1 keeps its one-launch kernel
    assert _attn_config(1200, 128, 32, 32, B=8, sms=132) == compiled and span_config(1200, 128, 32, 32, 8, 132) is None
    with pytest.raises(ValueError, match="SM count"):
        _attn_config(1200, 128, 32, 8, B=8)
    monkeypatch.setattr(configs, "ATTN_GQA_DOT", False)
    assert _attn_config(1200, 128, 32, 8, B=8, sms=132) == compiled and span_config(1200, 128, 32, 8, 8, 132) is None
    monkeypatch.setattr(configs, "CONFIG_OVERRIDE", lambda form, n, K: {"CHUNK": 32, "num_warps": 8})
    assert _attn_config(1200, 128, 32, 8, B=8, sms=132) == (32, 8)


@pytest.mark.parametrize("arch", [86, 90])
def test_gqa_attention_compiles_for_the_users_gpu_and_hopper(arch):
    """The tensor-core GQA split attention (on by default, configs.ATTN_GQA_DOT) compiles at the compiled block's
    config (ATTN_CHUNK, ATTN_COMPILED_WARPS) and the eager one for sm_86 (the A10G) and sm_90, in fp16 and bf16
    with tensor-core products, in fp32 without; so does its span form (ATTN_GQA_SPAN_CONFIG), its tiles loaded by
    cp.async."""
    pytest.importorskip("triton", reason="triton is not installed (the CPU torch build has none)")
    from core_helpers import compile_offline
    from llama_fast.kernels import configs

    names = ["q_ptr", "k_ptr", "v_ptr", "mask_ptr", "m_ptr", "l_ptr", "acc_ptr", "S", "H", "G", "scale", "sq_b",
             "sq_h", "sk_b", "sk_h", "sk_s", "sm_b", "NSPLIT"]
    launches = [(configs.ATTN_CHUNK, configs.ATTN_COMPILED_WARPS),
                (configs.ATTN_EAGER_CONFIG["CHUNK"], configs.ATTN_EAGER_CONFIG["num_warps"])]
    cases = [(dt, chunk, warps) for dt in ("fp16", "bf16", "fp32") for chunk, warps in launches]
    specs = [dict(module="llama_fast.kernels.attention", kernel="_decode_attn_split_gqa_kernel", names=names,
                  types=[f"*{dt}"] * 3 + ["*i1"] + ["*fp32"] * 3 + ["i32"] * 3 + ["fp32"] + ["i32"] * 7,
                  const=dict(D=128, CHUNK=chunk, QP=16, USE_PDL=0, NEWEST_AFTER_WAIT=False,
                             PRECISION="ieee" if dt == "fp32" else "tf32"),
                  options={"num_warps": warps}) for dt, chunk, warps in cases]
    span = configs.ATTN_GQA_SPAN_CONFIG  # and its span form at its eager config
    cases += [(dt, span["CHUNK"], span["num_warps"]) for dt in ("fp16", "bf16")]
    specs += [dict(module="llama_fast.kernels.attention", kernel="_decode_attn_span_gqa_kernel", names=names + ["SPAN"],
                   types=[f"*{dt}"] * 3 + ["*i1"] + ["*fp32"] * 3 + ["i32"] * 3 + ["fp32"] + ["i32"] * 8,
                   const=dict(D=128, CHUNK=span["CHUNK"], QP=16, USE_PDL=0, NEWEST_AFTER_WAIT=False, PRECISION="tf32",
                              STAGES=span["STAGES"]),
                   options={"num_warps": span["num_warps"]}, aligned=[0, 1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16])
              for dt in ("fp16", "bf16")]  # the pointers and strides 16-divisible, as the model's are
    outs = compile_offline(specs, arch)
    for (dt, chunk, warps), out in zip(cases, outs, strict=True):
        assert ("mma" in out["ptx"]) == (dt != "fp32"), (dt, arch, chunk, warps)
    assert all("cp.async" in out["ptx"] for out in outs[-2:])  # the span form's tiles, loaded STAGES deep


@needs_triton
def test_pdl_modes_the_model_asks_for():
    """model.pdl_mode / gemv_pdl_mode return the kernels' PDL_* values (model.py cannot import them: Triton is
    imported only where the kernels run); the attention refuses the early trigger it no longer has, and no
    kernel gets PDL off a GPU."""
    import llama_fast.kernels as kn
    from llama_fast.kernels.pdl import launch_kwargs, use_pdl
    from llama_fast.model import ForwardOptions, gemv_pdl_mode, pdl_mode

    fastest = ForwardOptions(pdl=True, pdl_gemv_early=True)
    assert (pdl_mode(fastest), gemv_pdl_mode(fastest)) == (kn.PDL_TRIGGER_LATE, kn.PDL_TRIGGER_EARLY)
    assert gemv_pdl_mode(ForwardOptions(pdl=True)) == kn.PDL_TRIGGER_LATE
    assert pdl_mode(ForwardOptions()) == gemv_pdl_mode(ForwardOptions(pdl_gemv_early=True)) == kn.PDL_OFF
    x = torch.zeros(1, 8)
    assert use_pdl(x, kn.PDL_TRIGGER_LATE) == kn.PDL_OFF and launch_kwargs(kn.PDL_OFF) == {}
    assert launch_kwargs(kn.PDL_TRIGGER_EARLY) == {"launch_pdl": True}
    q, k = torch.zeros(1, 2, 1, 16), torch.zeros(1, 2, 8, 16)
    mask = torch.ones(1, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="PDL_TRIGGER_LATE"):
        kn.decode_attention(q, k, k, mask, 0.25, kn.PDL_TRIGGER_EARLY)
    with pytest.raises(ValueError, match="PDL_TRIGGER_LATE"):
        kn.decode_attention_one_launch(q, k, k, mask, 0.25, torch.zeros(2, dtype=torch.int32), kn.PDL_TRIGGER_EARLY)


@needs_triton
def test_quantized_pinned_configs(monkeypatch):
    """The quantized GEMV forms take QUANT_CONFIGS (a K tile of 16 bytes per thread and row: 2048 int8, 4096 int4
    weights at 4 warps; measured faster: int8 SwiGLU 8 bytes, the int4 residual forms 16 rows over 8 warps, the
    tile of a row over half a program's threads), the qkv+RoPE forms a BLOCK_N that divides every
    head dim the fused path takes; the model-dtype forms keep their configs; CONFIG_OVERRIDE sees the quantized
    form names."""
    from llama_fast.kernels import configs
    from llama_fast.model import ROPE_MIN_HEAD_DIM

    monkeypatch.delenv("LLAMA_FAST_GEMV_AUTOTUNE", raising=False)
    monkeypatch.setattr(configs, "CONFIG_OVERRIDE", None)
    for fmt, bk in (("int8", 2048), ("int4", 4096)):
        for form in ("gemv", "rmsnorm", "residual", "swiglu", "qkv_rope"):
            c = configs.pinned_config(f"{form}_{fmt}", 4096, 4096)
            measured = (form, fmt) == ("swiglu", "int8")  # from the H200 sweep: half the tile, 4 warps
            rows = 4 if form == "swiglu" else 8  # the sum-of-squares group; SwiGLU writes no partials
            assert c["BLOCK_K"] == (bk // 2 if measured else bk) and c["BLOCK_N"] % rows == 0, (form, fmt, c)
            bytes_per_thread = c["BLOCK_K"] * (1 if fmt == "int8" else 0.5) / (32 * c["num_warps"])
            wide = (form, fmt) == ("residual", "int4") and (c["BLOCK_N"], c["num_warps"]) == (16, 8)
            assert bytes_per_thread == 16 or (form in ("swiglu", "qkv_rope") or wide) and bytes_per_thread == 8, (
                form, c)
        assert ROPE_MIN_HEAD_DIM % configs.pinned_config(f"qkv_rope_{fmt}", 12288, 4096)["BLOCK_N"] == 0
    # persistent programs (PERSIST) only where measured faster: int4 SwiGLU, qkv+RoPE and the head (RMSNorm)
    assert {f"{form}_{fmt}" for form in ("gemv", "rmsnorm", "residual", "swiglu", "qkv_rope") for fmt in
            ("int8", "int4") if configs.pinned_config(f"{form}_{fmt}", 4096, 4096).get("PERSIST")} == {
        "swiglu_int4", "qkv_rope_int4", "rmsnorm_int4"}
    assert configs.pinned_config("swiglu_int4", 11008, 4096).get("PERSIST")  # Llama-7B's w13
    assert configs.pinned_config("residual", 4096, 11008)["BLOCK_K"] == 1024  # unchanged
    assert configs.pinned_config("qkv_rope", 12288, 4096) == configs.QKV_ROPE_CONFIG
    asked = []
    monkeypatch.setattr(configs, "CONFIG_OVERRIDE", lambda form, n, K: asked.append(form))
    configs.pinned_config("swiglu_int4", 11008, 4096)
    assert asked == ["swiglu_int4"]


@needs_triton
def test_persistent_gemv_launch(monkeypatch):
    """PERSIST: a grid of PERSIST programs an SM, at most one a row block; where the persistent form cannot run
    (K wider than its one tile) the launch drops the key and takes one program a row block."""
    import llama_fast.kernels  # noqa: F401  (the package's `gemv` is the op: the module through sys.modules)
    from llama_fast.kernels import configs

    gemv = sys.modules["llama_fast.kernels.gemv"]
    cfg = {"BLOCK_N": 8, "BLOCK_K": 512, "num_warps": 4, "num_stages": 3, "PERSIST": 2}
    monkeypatch.setattr(configs, "CONFIG_OVERRIDE", lambda form, n, K: cfg)
    monkeypatch.setattr(gemv, "sm_count", lambda device: 3)
    for K, persist, programs in ((512, 2, 6), (1024, None, 25)):  # 200 rows: 25 blocks of 8
        x, w = torch.zeros(1, K), torch.zeros(200, K)
        _, grid, _, kwargs, _ = gemv.fused_call(x, w, x, x, x, 0.0, gemv.PROLOGUE_NONE, gemv.EPILOGUE_NONE, 200,
                                                0, None, None, 0)
        assert kwargs.get("PERSIST") == persist and grid(kwargs) == (programs,), (K, kwargs)


@needs_triton
def test_quantized_weight_arguments_are_checked():
    """A quantized weight whose tensors do not fit the format is refused with one clear error, before any
    launch (kernels/dequant.weight_format)."""
    from llama_fast.kernels.dequant import WFMT_DENSE, WFMT_INT4, WFMT_INT8, weight_format

    x = torch.zeros(1, 256)
    w = torch.zeros(8, 256)
    q8, s8 = quantize_int8(torch.randn(8, 256))
    q4, s4, o4 = quantize_int4(torch.randn(8, 256), 64)
    assert weight_format(x, w, None, None, 0, 8)[:2] == (WFMT_DENSE, 0)
    fmt, group, words, kw = weight_format(x, q8, s8, None, 0, 8)
    assert (fmt, group, words.dtype, words.shape, kw) == (WFMT_INT8, 0, torch.int32, (8, 64), 64)
    fmt, group, words, kw = weight_format(x, q4, s4, o4, 64, 8)
    assert (fmt, group, words.dtype, words.shape, kw) == (WFMT_INT4, 64, torch.int32, (8, 32), 32)
    assert words.data_ptr() == q4.data_ptr()  # a view of the packed bytes, not a copy
    bad = [((q4, s4, o4, 48, 8), "group one of"), ((q4, s4, o4, 128, 8), r"\(8, 2\)"),
           ((q4, s4, None, 64, 8), "int8 weights"), ((q8, s8, None, 32, 8), "no group"),
           ((q8, s8[:4], None, 0, 8), "scales"), ((w, None, o4, 0, 8), "need scales"),
           ((q4.view(torch.int8), s4, o4, 64, 8), "uint8"), ((q8, s8, None, 0, 16), r"int8 \(16, 256\)")]
    for args, match in bad:
        with pytest.raises(ValueError, match=match):
            weight_format(x, *args)


@needs_triton
def test_ops_take_optional_quantization_arguments():
    """Each GEMV op keeps its torch.library name and arguments and ends with the optional quantized-weight
    arguments (None / 0: the model dtype), which torch.library records as Tensor? and int defaults."""
    import llama_fast.kernels  # noqa: F401  (registers the ops)

    for name in ("gemv", "gemv_rmsnorm", "gemv_residual_ss", "gemv_rmsnorm_swiglu", "gemv_rmsnorm_qkv_rope"):
        schema = str(getattr(torch.ops.llama_fast, name).default._schema)
        assert schema.startswith(f"llama_fast::{name}(Tensor x, "), schema
        assert "Tensor? scales=None, Tensor? offsets=None, SymInt group=0) ->" in schema, schema
