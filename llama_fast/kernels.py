"""Triton kernels for the memory-bound decode step (imported only on CUDA).

gemv: y (1, N) = x (1, K) @ W (N, K)^T for the batch-1 decode step, streaming W once with an fp32
accumulator, with fused prologues / epilogues (RMSNorm, residual + sum-of-squares partials, SwiGLU, RoPE and
the K/V cache write); split-K decode attention over the static cache. Each op is a torch.library.triton_op,
so torch.compile keeps it inside the step graph; launched eagerly (the fastest path's decode block, inside
the step's CUDA graph) they take pinned configs and may use programmatic dependent launch (PDL, below).
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

try:  # grid dependency control (programmatic dependent launch, sm_90+); Triton >= 3.3
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - older Triton: the USE_PDL branches are never compiled
    gdc_launch_dependents = gdc_wait = None

# ----------------------------------------------------------------------------------------------- PDL
# Programmatic dependent launch: a kernel launched with it may start while the kernel before it in the stream
# is still running. Each of our decode kernels first issues the loads that do not depend on that kernel (the
# first tile of its weights, which nothing writes), then waits (gdc_wait: the previous kernel has finished and
# its writes are visible), and once its main loop is done lets the next kernel launch (gdc_launch_dependents;
# PDL_TRIGGER_LATE, what ForwardOptions.pdl means: letting it launch right after the wait lost 2 %, run 18).
# So the next kernel's first weight tile loads during this kernel's tail instead of after it; nothing is
# written before the wait. Only one kernel can be in flight ahead of another (each triggers its dependents
# after its own wait), and PDL-launched kernels captured in a CUDA graph keep these programmatic edges
# (CUDA >= 12.3).


PDL_OFF, PDL_TRIGGER_EARLY, PDL_TRIGGER_LATE = 0, 1, 2  # when a kernel lets the next one launch: right
# after its wait, or after its main loop (so the next kernel's programs wait in fewer SM slots for less time)


def use_pdl(x: torch.Tensor, pdl: int) -> int:
    """The PDL mode to launch with: pdl where it applies (a CUDA device of compute capability >= 9, a Triton
    with grid dependency control, not Triton's CPU interpreter, which has no gdc ops), else PDL_OFF."""
    # not inside torch.compile: its launches carry no PDL attribute, and Inductor cannot analyse the gdc inline
    # asm (it then treats every argument as mutated). This check sees Dynamo's tracing only, not a triton_op's
    # body traced by AOTAutograd: compiled callers pass PDL_OFF themselves (model.pdl_mode)
    ok = (x.is_cuda and gdc_wait is not None and os.environ.get("TRITON_INTERPRET", "0") != "1"
          and not torch.compiler.is_compiling() and torch.cuda.get_device_capability(x.device)[0] >= 9)
    return int(pdl) if ok else PDL_OFF


def _launch_kwargs(pdl: int) -> dict:
    """launch_pdl=True when pdl (a use_pdl result: never set inside torch.compile) asks for it."""
    return {"launch_pdl": True} if pdl else {}


# One row only: a multi-row variant (each W tile used for up to 8 rows) measured 336 tok/s at batch 4 against
# 725 for cuBLAS on an H200 (docs/PERF.md), so batches > 1 keep cuBLAS.
GEMV_MAX_ROWS = 1


def _configs():
    """A small search space (12 configs) keeps the cold autotune to a few seconds per shape. num_stages does not
    pipeline these loads: Triton (3.6 and 3.9, sm_90) emits no cp.async for loads that feed no dot, and loading
    the weight tiles one or two K iterations ahead by hand was slower in the step (docs/PERF.md, row 45)."""
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=4, num_stages=stages)
            for bn in (8, 16, 32) for bk in (256, 512) for stages in (2, 3)]


# ----------------------------------------------------------------------------------------------- fused
# One GEMV kernel with an optional fused prologue / epilogue (constexpr switches: the plain GEMV compiles
# to the bare loop). The batch-1 decode block is four of them around attention:
#   wqkv: RMSNorm prologue          wo: residual epilogue + sum-of-squares partials of its output
#   w13:  RMSNorm prologue + SwiGLU epilogue (gate row n and up row n in one program)
#   w2:   residual epilogue + sum-of-squares partials
# The RMSNorm statistics come from the partials the previous kernel wrote (one fp32 per SS_GROUP output
# rows), so no program re-reads a whole row to normalize it, and nothing needs zeroing or atomics.
# Each step rounds where transformers' fp16 code rounds (normed x, gate, up, silu, the product, the
# projection before the residual add), so only the GEMV's summation order differs from the unfused path.
PROLOGUE_NONE, PROLOGUE_RMSNORM, PROLOGUE_RMSNORM_LATE = 0, 1, 2
EPILOGUE_NONE, EPILOGUE_RESIDUAL_SS, EPILOGUE_SWIGLU = 0, 1, 2
SS_GROUP = 8  # output rows per sum-of-squares partial (every BLOCK_N is a multiple)
# PROLOGUE_RMSNORM rounds the normalized activations exactly as transformers does but must wait for the
# statistics before streaming; PROLOGUE_RMSNORM_LATE multiplies by the scalar 1/rms after the dot product
# (same math, fp16 rounding of the normalized activations skipped). scripts/fused_bench.py compares them.
RMSNORM_MODE = PROLOGUE_RMSNORM


@triton.jit
def _x_tile(x_ptr, g_ptr, k, k_mask, rstd, PROLOGUE: tl.constexpr):
    """The K tile k of the GEMV input in fp32, with the RMSNorm prologue applied."""
    dt = x_ptr.dtype.element_ty
    xv = tl.load(x_ptr + k, mask=k_mask, other=0.0)
    if PROLOGUE == 1:  # g * (x * rstd).to(dt), as transformers' LlamaRMSNorm
        g = tl.load(g_ptr + k, mask=k_mask, other=0.0)
        xv = g * (xv.to(tl.float32) * rstd).to(dt)
    if PROLOGUE == 2:  # g * x now, the scalar rstd after the sum: the weights stream from the start
        g = tl.load(g_ptr + k, mask=k_mask, other=0.0)
        xv = g.to(tl.float32) * xv.to(tl.float32)
    return xv.to(tl.float32)


@triton.jit
def _w_tiles(w_ptr, rn, n_mask, k, K, offset, stride_wn, TWO: tl.constexpr):
    """The weight tile at rows rn, columns k (streamed once: evict first) and, with TWO, the tile of the rows
    `offset` further down (SwiGLU's up rows; RoPE's second half of a head), else the same tile again."""
    w_off = rn[:, None] * stride_wn + k[None, :]
    wm = n_mask[:, None] & (k < K)[None, :]
    w = tl.load(w_ptr + w_off, mask=wm, other=0.0, eviction_policy="evict_first")
    w2 = w
    if TWO:
        w2 = tl.load(w_ptr + offset * stride_wn + w_off, mask=wm, other=0.0, eviction_policy="evict_first")
    return w, w2


@triton.autotune(configs=_configs(), key=["N", "K", "PROLOGUE", "EPILOGUE"])
@triton.jit
def _gemv_fused_kernel(x_ptr, w_ptr, y_ptr, g_ptr, res_ptr, ss_in_ptr, ss_out_ptr, N, K, NSS, stride_wn, eps,
                       PROLOGUE: tl.constexpr, EPILOGUE: tl.constexpr, NSS_BLOCK: tl.constexpr,
                       USE_PDL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    n_mask = rn < N
    dt = x_ptr.dtype.element_ty
    # the first K tile of the weights (and of the up rows): nothing writes them, so they load before the wait
    # for the previous kernel
    w, w_up = _w_tiles(w_ptr, rn, n_mask, rk, K, N, stride_wn, EPILOGUE == 2)
    if USE_PDL != 0:
        gdc_wait()  # x, the partials and the residual come from earlier kernels
    if USE_PDL == 1:
        gdc_launch_dependents()
    rstd = 0.0
    if PROLOGUE != 0:  # RMSNorm statistics: the NSS sum-of-squares partials of x (fp32, from L2), one load
        rp = tl.arange(0, NSS_BLOCK)
        ss = tl.load(ss_in_ptr + rp, mask=rp < NSS, other=0.0)
    if PROLOGUE == 1:  # the scale is needed before the first product
        # float scalars may arrive as fp64 (inductor types a float argument by its value): keep fp32
        rstd = (1.0 / tl.sqrt(tl.sum(ss, axis=0) / K + eps)).to(tl.float32)
    xf = _x_tile(x_ptr, g_ptr, rk, rk < K, rstd, PROLOGUE)
    acc = w.to(tl.float32) * xf[None, :]  # (BLOCK_N, BLOCK_K) fp32
    if EPILOGUE == 2:
        acc_up = w_up.to(tl.float32) * xf[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        k = k0 + rk
        w, w_up = _w_tiles(w_ptr, rn, n_mask, k, K, N, stride_wn, EPILOGUE == 2)
        xf = _x_tile(x_ptr, g_ptr, k, k < K, rstd, PROLOGUE)
        acc += w.to(tl.float32) * xf[None, :]
        if EPILOGUE == 2:
            acc_up += w_up.to(tl.float32) * xf[None, :]
    if USE_PDL == 2:
        gdc_launch_dependents()
    y32 = tl.sum(acc, axis=1)
    if PROLOGUE == 2:
        rstd = (1.0 / tl.sqrt(tl.sum(ss, axis=0) / K + eps)).to(tl.float32)
        y32 = y32 * rstd
    y = y32.to(dt)
    if EPILOGUE == 1:  # + residual, then this output's sum-of-squares partials for the next RMSNorm
        r = tl.load(res_ptr + rn, mask=n_mask, other=0.0)
        y = (r.to(tl.float32) + y.to(tl.float32)).to(dt)
        yf = y.to(tl.float32)
        part = tl.sum(tl.reshape(yf * yf, (BLOCK_N // 8, 8)), axis=1)  # 8 == SS_GROUP
        rg = pid * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
        tl.store(ss_out_ptr + rg, part, mask=rg < tl.cdiv(N, 8))
    if EPILOGUE == 2:  # silu(gate) * up, each rounded as transformers' fp16 MLP rounds
        gate = y.to(tl.float32)
        up32 = tl.sum(acc_up, axis=1)
        if PROLOGUE == 2:
            up32 = up32 * rstd
        up = up32.to(dt)
        act = (gate / (1.0 + tl.exp(-gate))).to(dt)
        y = act * up
    tl.store(y_ptr + rn, y, mask=n_mask)


# Eager launches (the kernels-only decode block runs uncompiled inside the step's CUDA graph) take one config
# per form instead of the autotuner: the autotuner compiles its 12 configs per shape one after another in the
# first call (about 30 s of a 62 s cold warm-up, run 17), and its picks moved between processes. These are its
# picks at the Llama-7B decode shapes in a warm H200 process (run 17). Inside torch.compile, Inductor compiles
# the configs in parallel and keeps the search. LLAMA_FAST_GEMV_AUTOTUNE=1 keeps it for eager launches too.
QKV_ROPE_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 256, "num_warps": 4, "num_stages": 3}


def gemv_config(n: int, epilogue: int) -> dict:
    """The pinned config of an eager fused GEMV with n output rows (BLOCK_N a multiple of SS_GROUP). The residual
    GEMVs (wo, w2) take 1024-wide K tiles at 8 warps: decode 3.749 against 3.812 ms/step in one H200 process
    (run 62; at 4 warps that tile was 14 % slower, run 21)."""
    if epilogue == EPILOGUE_RESIDUAL_SS:
        return {"BLOCK_N": 8, "BLOCK_K": 1024, "num_warps": 8, "num_stages": 3}
    return {"BLOCK_N": 16 if n >= 16384 else 8, "BLOCK_K": 512, "num_warps": 4,
            "num_stages": 2 if epilogue == EPILOGUE_SWIGLU else 3}  # SwiGLU streams two tiles per stage


# Lab hook (scripts/perf_lab.py --config-trials): (form, n, K) -> a config dict, or None for the pinned one.
# Forms: gemv, rmsnorm, residual, swiglu, qkv_rope, attention (n = cache slots, K = head dim; CHUNK, num_warps).
CONFIG_OVERRIDE: Callable[[str, int, int], dict | None] | None = None


def _pinned() -> bool:
    return not torch.compiler.is_compiling() and os.environ.get("LLAMA_FAST_GEMV_AUTOTUNE", "0") != "1"


def _override(form: str, n: int, K: int) -> dict | None:
    return CONFIG_OVERRIDE(form, n, K) if CONFIG_OVERRIDE is not None else None


def _launch_fused(x, w, g, res, ss_in, eps: float, prologue: int, epilogue: int, n: int, pdl: int = PDL_OFF):
    """(y (1, n), sum-of-squares partials (cdiv(n, SS_GROUP),) fp32 when the epilogue makes them, else y)."""
    pdl = use_pdl(x, pdl)
    K = x.shape[1]
    y = torch.empty((1, n), device=x.device, dtype=x.dtype)
    # the partials buffer exists only when the epilogue writes it; otherwise y stands in (never written)
    ss_out = (torch.empty((triton.cdiv(n, SS_GROUP),), device=x.device, dtype=torch.float32)
              if epilogue == EPILOGUE_RESIDUAL_SS else y)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]),)

    form = {EPILOGUE_SWIGLU: "swiglu", EPILOGUE_RESIDUAL_SS: "residual"}.get(epilogue,
                                                                            "rmsnorm" if prologue else "gemv")
    kernel, config = ((_gemv_fused_kernel.fn, _override(form, n, K) or gemv_config(n, epilogue)) if _pinned()
                      else (_gemv_fused_kernel, {}))
    wrap_triton(kernel)[grid](x, w, y, g, res, ss_in, ss_out, n, K, ss_in.numel(), w.stride(0), eps,
                              PROLOGUE=prologue, EPILOGUE=epilogue,
                              NSS_BLOCK=triton.next_power_of_2(ss_in.numel()) if prologue else 1,
                              USE_PDL=pdl, **config, **_launch_kwargs(pdl))
    return y, ss_out


def ss_partials(x: torch.Tensor) -> torch.Tensor:
    """Sum-of-squares partials of a (1, K) row in the kernels' format (torch; for the first block's input)."""
    return x.float().pow(2).view(-1, SS_GROUP).sum(-1)


@triton_op("llama_fast::gemv", mutates_args=())
def gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """W @ x: x (1, K) contiguous, w (N, K) contiguous -> (1, N) in x.dtype."""
    return _launch_fused(x, w, x, x, x, 0.0, PROLOGUE_NONE, EPILOGUE_NONE, w.shape[0])[0]


@triton_op("llama_fast::gemv_rmsnorm", mutates_args=())
def gemv_rmsnorm(x: torch.Tensor, ss: torch.Tensor, g: torch.Tensor, w: torch.Tensor, eps: float,
                 pdl: int = PDL_OFF) -> torch.Tensor:
    """W @ rmsnorm(x) * g: x (1, K), ss its sum-of-squares partials, g (K,), w (N, K) -> (1, N).
    pdl: a PDL_* mode, applied where it can be (use_pdl), as in every op below."""
    return _launch_fused(x, w, g, x, ss, eps, RMSNORM_MODE, EPILOGUE_NONE, w.shape[0], pdl)[0]


@triton_op("llama_fast::gemv_residual_ss", mutates_args=())
def gemv_residual_ss(x: torch.Tensor, w: torch.Tensor, res: torch.Tensor,
                     pdl: int = PDL_OFF) -> tuple[torch.Tensor, torch.Tensor]:
    """(res + W @ x, its sum-of-squares partials): x (1, K), w (N, K), res (1, N) -> (1, N), (N / 8,)."""
    return _launch_fused(x, w, x, res, x, 0.0, PROLOGUE_NONE, EPILOGUE_RESIDUAL_SS, w.shape[0], pdl)


@triton_op("llama_fast::gemv_rmsnorm_swiglu", mutates_args=())
def gemv_rmsnorm_swiglu(x: torch.Tensor, ss: torch.Tensor, g: torch.Tensor, w13: torch.Tensor,
                        eps: float, pdl: int = PDL_OFF) -> torch.Tensor:
    """silu(gate) * up of h = rmsnorm(x) * g: w13 (2I, K) = [gate; up] -> (1, I)."""
    return _launch_fused(x, w13, g, x, ss, eps, RMSNORM_MODE, EPILOGUE_SWIGLU, w13.shape[0] // 2, pdl)[0]


# ----------------------------------------------------------------------------------------------- qkv + RoPE
# The wqkv GEMV of the batch-1 decode step with the RMSNorm prologue and, in its epilogue, RoPE and the
# K/V cache write: a program computes BLOCK_N/2 rows of one head's first half and the matching rows of its
# second half (RoPE pairs d with d + D/2), rotates q and k, writes q to the output and k, v into the cache
# slot input_pos. Replaces the two Inductor kernels per layer that rotated and scattered.
@triton.autotune(configs=_configs(), key=["N", "K", "D"])
@triton.jit
def _gemv_qkv_rope_kernel(x_ptr, w_ptr, q_ptr, kc_ptr, vc_ptr, g_ptr, ss_ptr, cos_ptr, sin_ptr, pos_ptr,
                          N, K, NSS, stride_wn, eps, H, HKV, stride_ch, stride_cs,
                          D: tl.constexpr, NSS_BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    HALF: tl.constexpr = BLOCK_N // 2
    pid = tl.program_id(0)
    u = pid // (D // BLOCK_N)  # head unit: q heads, then k heads, then v heads
    d1 = (pid % (D // BLOCK_N)) * HALF + tl.arange(0, HALF)  # (HALF,) dims in the first half of the head
    r1 = u * D + d1
    r2 = r1 + D // 2
    rk = tl.arange(0, BLOCK_K)
    dt = x_ptr.dtype.element_ty
    # the first K tile of the weights loads before the wait for the previous kernel (see _gemv_fused_kernel)
    w1, w2 = _w_tiles(w_ptr, r1, r1 < N, rk, K, D // 2, stride_wn, True)  # rows r1 and r2 = r1 + D/2
    if USE_PDL != 0:
        gdc_wait()  # x and its partials come from the previous kernel; the cache slot is written after this
    if USE_PDL == 1:
        gdc_launch_dependents()
    rp = tl.arange(0, NSS_BLOCK)
    ss = tl.load(ss_ptr + rp, mask=rp < NSS, other=0.0)
    # float scalars may arrive as fp64 (inductor types a float argument by its value): keep fp32
    rstd = (1.0 / tl.sqrt(tl.sum(ss, axis=0) / K + eps)).to(tl.float32)
    xf = _x_tile(x_ptr, g_ptr, rk, rk < K, rstd, 1)  # as transformers' LlamaRMSNorm
    acc1 = w1.to(tl.float32) * xf[None, :]  # (HALF, BLOCK_K) fp32
    acc2 = w2.to(tl.float32) * xf[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        k = k0 + rk
        w1, w2 = _w_tiles(w_ptr, r1, r1 < N, k, K, D // 2, stride_wn, True)
        xf = _x_tile(x_ptr, g_ptr, k, k < K, rstd, 1)
        acc1 += w1.to(tl.float32) * xf[None, :]
        acc2 += w2.to(tl.float32) * xf[None, :]
    if USE_PDL == 2:
        gdc_launch_dependents()
    y1 = tl.sum(acc1, axis=1).to(dt).to(tl.float32)  # the projection, rounded as transformers' q/k/v
    y2 = tl.sum(acc2, axis=1).to(dt).to(tl.float32)
    # RoPE with the signed sine table (-sin | +sin): x * cos + swap_halves(x) * sin, each product rounded
    c1 = tl.load(cos_ptr + d1).to(tl.float32)
    c2 = tl.load(cos_ptr + d1 + D // 2).to(tl.float32)
    s1 = tl.load(sin_ptr + d1).to(tl.float32)
    s2 = tl.load(sin_ptr + d1 + D // 2).to(tl.float32)
    rot1 = ((y1 * c1).to(dt).to(tl.float32) + (y2 * s1).to(dt).to(tl.float32)).to(dt)
    rot2 = ((y2 * c2).to(dt).to(tl.float32) + (y1 * s2).to(dt).to(tl.float32)).to(dt)
    pos = tl.load(pos_ptr)
    if u < H:
        tl.store(q_ptr + r1, rot1)
        tl.store(q_ptr + r2, rot2)
    elif u < H + HKV:
        kb = kc_ptr + (u - H) * stride_ch + pos * stride_cs
        tl.store(kb + d1, rot1)
        tl.store(kb + d1 + D // 2, rot2)
    else:
        vb = vc_ptr + (u - H - HKV) * stride_ch + pos * stride_cs
        tl.store(vb + d1, y1.to(dt))
        tl.store(vb + d1 + D // 2, y2.to(dt))


@triton_op("llama_fast::gemv_rmsnorm_qkv_rope", mutates_args={"k_cache", "v_cache"})
def gemv_rmsnorm_qkv_rope(x: torch.Tensor, ss: torch.Tensor, g: torch.Tensor, wqkv: torch.Tensor, eps: float,
                          cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          input_pos: torch.Tensor, n_heads: int, pdl: int = PDL_OFF) -> torch.Tensor:
    """Batch-1 decode: q (1, H*D) = RoPE(wqkv @ rmsnorm(x) * g)[:H*D]; rotated k and v written into
    k_cache / v_cache (1, Hkv, S, D) at slot input_pos (1,). cos, sin (D,): this position's tables (sin
    signed: -sin on the first half). Every BLOCK_N of the search space (8..32) must divide D
    (model.ROPE_MIN_HEAD_DIM)."""
    D = cos.numel()
    hkv = k_cache.shape[1]
    pdl = use_pdl(x, pdl)
    q = torch.empty((1, n_heads * D), device=x.device, dtype=x.dtype)

    def grid(meta):
        return ((n_heads + 2 * hkv) * (D // meta["BLOCK_N"]),)

    kernel, config = ((_gemv_qkv_rope_kernel.fn, _override("qkv_rope", wqkv.shape[0], x.shape[1]) or QKV_ROPE_CONFIG)
                      if _pinned() else (_gemv_qkv_rope_kernel, {}))
    wrap_triton(kernel)[grid](x, wqkv, q, k_cache, v_cache, g, ss, cos, sin, input_pos,
                              wqkv.shape[0], x.shape[1], ss.numel(), wqkv.stride(0), eps, n_heads,
                              hkv, k_cache.stride(1), k_cache.stride(2), D=D,
                              NSS_BLOCK=triton.next_power_of_2(ss.numel()), USE_PDL=pdl, **config,
                              **_launch_kwargs(pdl))
    return q


# ----------------------------------------------------------------------------------------------- attention
# Split-K decode attention over the static cache: one program per (batch*head, chunk of the cache), each
# a softmax over its one tile of the cache; the chunks are then combined, by a second kernel
# (decode_attention) or by the last program of each head to finish (decode_attention_one_launch: one kernel
# per layer fewer; a per-head arrival counter, left at zero for the next call). Masked-out slots are never
# loaded (masked loads), so only the attended prefix of the cache is read.
ATTN_CHUNK = 64  # slots per program: one tile, K and V loads issued together


@triton.jit
def _attn_chunk(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, bh, j, S, H, G, scale,
                sq_b, sq_h, sk_b, sk_h, sk_s, sm_b, NSPLIT, D: tl.constexpr, CHUNK: tl.constexpr,
                USE_PDL: tl.constexpr, NEWEST_AFTER_WAIT: tl.constexpr):
    """Softmax statistics (max m, sum l) and the unnormalized output of chunk j of head bh -> partials."""
    b = bh // H
    h = bh % H
    hk = h // G
    rd = tl.arange(0, D)
    rs = j * CHUNK + tl.arange(0, CHUNK)
    ok = tl.load(mask_ptr + b * sm_b + rs, mask=rs < S, other=0) != 0  # written before the step's kernels
    kv_off = b * sk_b + hk * sk_h + rs[:, None] * sk_s + rd[None, :]
    k = tl.load(k_ptr + kv_off, mask=ok[:, None], other=0.0)  # masked slots are never read
    v = tl.load(v_ptr + kv_off, mask=ok[:, None], other=0.0)
    if USE_PDL != 0:
        gdc_wait()
    if USE_PDL == 1:
        gdc_launch_dependents()
    if NEWEST_AFTER_WAIT:  # the cache was loaded before the wait; only the newest attended slot (this step's
        # token, which the previous kernel may be writing) is read again after it. In a chunk before the
        # newest slot's, the row read again is its last one, unchanged. (Separate from USE_PDL: Triton's
        # interpreter, which has no gdc ops, tests this part.)
        last = tl.max(tl.where(ok, rs, -1), axis=0)
        # .cg: from L2, never this SM's L1 copy of the stale row loaded above
        # (no attended slot in this chunk: last = -1 matches no row; slot 0 is read and unused)
        row = b * sk_b + hk * sk_h + tl.maximum(last, 0) * sk_s + rd
        k_last = tl.load(k_ptr + row, cache_modifier=".cg")
        v_last = tl.load(v_ptr + row, cache_modifier=".cg")
        newest = (rs == last)[:, None]
        k = tl.where(newest, k_last[None, :], k)
        v = tl.where(newest, v_last[None, :], v)
    # float scalars may arrive as fp64 (inductor types a float argument by its value): keep the math in fp32
    q = (tl.load(q_ptr + b * sq_b + h * sq_h + rd).to(tl.float32) * scale).to(tl.float32)
    scores = tl.where(ok, tl.sum(k.to(tl.float32) * q[None, :], axis=1), float("-inf"))
    m = tl.max(scores, axis=0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    p = tl.exp(scores - m_safe)
    l = tl.sum(p, axis=0)
    acc = tl.sum(p[:, None] * v.to(tl.float32), axis=0)
    if USE_PDL == 2:
        gdc_launch_dependents()
    out = bh * NSPLIT + j
    tl.store(m_ptr + out, m)
    tl.store(l_ptr + out, l)
    tl.store(acc_ptr + out * D + rd, acc)


@triton.jit
def _attn_combine(m_ptr, l_ptr, acc_ptr, o_ptr, bh, NSPLIT, D: tl.constexpr, SPLITS: tl.constexpr):
    """o of head bh from its NSPLIT partials (read through L2: other programs wrote them)."""
    rj = tl.arange(0, SPLITS)
    rd = tl.arange(0, D)
    jm = rj < NSPLIT
    m = tl.load(m_ptr + bh * NSPLIT + rj, mask=jm, other=float("-inf"), cache_modifier=".cg")
    l = tl.load(l_ptr + bh * NSPLIT + rj, mask=jm, other=0.0, cache_modifier=".cg")
    acc = tl.load(acc_ptr + (bh * NSPLIT + rj[:, None]) * D + rd[None, :], mask=jm[:, None], other=0.0,
                  cache_modifier=".cg")
    big = tl.max(m, axis=0)  # finite: the current position is always attended
    w = tl.where(m == float("-inf"), 0.0, tl.exp(m - big))
    o = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(o_ptr + bh * D + rd, o.to(o_ptr.dtype.element_ty))


# 2 warps per 64-slot tile: 7.9 us against 9.7 with 4 (scripts/fused_bench.py, H200); one config, no search.
# Plain @triton.jit kernels with the warps as a launch argument: wrapped in a one-config, empty-kwargs
# triton.autotune (as they were until row 41 of docs/PERF.md), torch 2.11's Inductor called the compiled
# one-launch kernel's launcher one argument short ("launcher() missing 1 required positional argument: '_grid_2'").
ATTN_COMPILED_WARPS = 2


@triton.jit
def _decode_attn_split_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, S, H, G, scale,
                              sq_b, sq_h, sk_b, sk_h, sk_s, sm_b, NSPLIT,
                              D: tl.constexpr, CHUNK: tl.constexpr, USE_PDL: tl.constexpr,
                              NEWEST_AFTER_WAIT: tl.constexpr):
    _attn_chunk(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, tl.program_id(0), tl.program_id(1), S, H, G,
                scale, sq_b, sq_h, sk_b, sk_h, sk_s, sm_b, NSPLIT, D, CHUNK, USE_PDL, NEWEST_AFTER_WAIT)


@triton.jit
def _decode_attn_combine_kernel(m_ptr, l_ptr, acc_ptr, o_ptr, NSPLIT, D: tl.constexpr, SPLITS: tl.constexpr,
                                USE_PDL: tl.constexpr):
    if USE_PDL != 0:
        gdc_wait()
        gdc_launch_dependents()
    _attn_combine(m_ptr, l_ptr, acc_ptr, o_ptr, tl.program_id(0), NSPLIT, D, SPLITS)


@triton.jit
def _decode_attn_one_launch_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, cnt_ptr, o_ptr, S, H, G,
                                   scale, sq_b, sq_h, sk_b, sk_h, sk_s, sm_b, NSPLIT,
                                   D: tl.constexpr, CHUNK: tl.constexpr, SPLITS: tl.constexpr,
                                   USE_PDL: tl.constexpr, NEWEST_AFTER_WAIT: tl.constexpr):
    bh = tl.program_id(0)
    _attn_chunk(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, bh, tl.program_id(1), S, H, G, scale,
                sq_b, sq_h, sk_b, sk_h, sk_s, sm_b, NSPLIT, D, CHUNK, USE_PDL, NEWEST_AFTER_WAIT)
    arrived = tl.atomic_add(cnt_ptr + bh, 1)  # acq_rel: this chunk's partials are visible before the count
    if arrived == NSPLIT - 1:  # the last chunk of this head to finish combines them all
        _attn_combine(m_ptr, l_ptr, acc_ptr, o_ptr, bh, NSPLIT, D, SPLITS)
        tl.atomic_xchg(cnt_ptr + bh, 0)  # zero again for the next call (and the next graph replay)


# Eager launches (fused-pdl's block) take 128-slot tiles at 4 warps: half the programs of 64/2, decode
# 3.851 against 3.894-3.902 ms/step in one H200 process (run 19); inside torch.compile the 64/2 config stays.
ATTN_EAGER_CONFIG = {"CHUNK": 128, "num_warps": 4}


def _attn_config(S: int, D: int) -> tuple[int, int]:
    """(slots per program, warps): eager launches take ATTN_EAGER_CONFIG (or the lab override), torch.compile
    ATTN_CHUNK-slot tiles at ATTN_COMPILED_WARPS."""
    if not _pinned():
        return ATTN_CHUNK, ATTN_COMPILED_WARPS
    cfg = _override("attention", S, D) or ATTN_EAGER_CONFIG
    return cfg["CHUNK"], cfg["num_warps"]


def _attn_buffers(q, S, chunk):
    B, H, _, D = q.shape
    nsplit = triton.cdiv(S, chunk)
    m = torch.empty((B * H * nsplit,), device=q.device, dtype=torch.float32)
    acc = torch.empty((B * H * nsplit, D), device=q.device, dtype=torch.float32)
    o = torch.empty((B, H, 1, D), device=q.device, dtype=q.dtype)
    return nsplit, m, torch.empty_like(m), acc, o


@triton_op("llama_fast::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     scale: float, pdl: int = PDL_OFF) -> torch.Tensor:
    """One query per row: q (B, H, 1, D), k/v cache (B, Hkv, S, D), mask (B, S) bool -> (B, H, 1, D).
    With pdl, only the newest attended slot of each row may be written by the kernel before (the step's)."""
    B, H, _, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    pdl = use_pdl(q, pdl)
    chunk, warps = _attn_config(S, D)
    nsplit, m, l, acc, o = _attn_buffers(q, S, chunk)
    wrap_triton(_decode_attn_split_kernel)[(B * H, nsplit)](
        q, k, v, mask, m, l, acc, S, H, H // Hkv, scale, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        k.stride(2), mask.stride(0), nsplit, D=D, CHUNK=chunk, USE_PDL=pdl, NEWEST_AFTER_WAIT=pdl != 0,
        num_warps=warps, **_launch_kwargs(pdl))
    wrap_triton(_decode_attn_combine_kernel)[(B * H,)](m, l, acc, o, nsplit, D=D,
                                                         SPLITS=triton.next_power_of_2(nsplit), USE_PDL=pdl,
                                                         **_launch_kwargs(pdl))
    return o


@triton_op("llama_fast::decode_attention_one_launch", mutates_args={"counters"})
def decode_attention_one_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                                scale: float, counters: torch.Tensor, pdl: int = PDL_OFF) -> torch.Tensor:
    """decode_attention in one kernel: counters (B*H,) int32, zero before the call and left zero after."""
    B, H, _, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    pdl = use_pdl(q, pdl)
    chunk, warps = _attn_config(S, D)
    nsplit, m, l, acc, o = _attn_buffers(q, S, chunk)
    wrap_triton(_decode_attn_one_launch_kernel)[(B * H, nsplit)](
        q, k, v, mask, m, l, acc, counters, o, S, H, H // Hkv, scale, q.stride(0), q.stride(1), k.stride(0),
        k.stride(1), k.stride(2), mask.stride(0), nsplit, D=D, CHUNK=chunk,
        SPLITS=triton.next_power_of_2(nsplit), USE_PDL=pdl, NEWEST_AFTER_WAIT=pdl != 0, num_warps=warps,
        **_launch_kwargs(pdl))
    return o
