"""Triton kernels for the memory-bound decode step (imported only on CUDA).

gemv: y (1, N) = x (1, K) @ W (N, K)^T for the batch-1 decode step, streaming W once with an fp32
accumulator. Registered with torch.library.triton_op so torch.compile keeps it inside the step graph.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

# One row only: a multi-row variant (each W tile used for up to 8 rows) measured 336 tok/s at batch 4 against
# 725 for cuBLAS on an H200 (docs/PERF.md), so batches > 1 keep cuBLAS.
GEMV_MAX_ROWS = 1


def _configs():
    """A small search space (12 configs) keeps the cold autotune to a few seconds per shape."""
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=4, num_stages=stages)
            for bn in (8, 16, 32) for bk in (256, 512) for stages in (2, 3)]


# ----------------------------------------------------------------------------------------------- fused
# One GEMV kernel with an optional fused prologue / epilogue (constexpr switches: the plain GEMV compiles
# to the bare loop). The decode block as four kernels around attention: rmsnorm->GEMV (wqkv),
# GEMV->+residual (wo), rmsnorm->GEMV (w13), silu*mul->GEMV->+residual (w2). Each rounds where
# transformers' fp16 code rounds (normed x, silu, the product, the projection before the residual add),
# so only the GEMV's summation order differs from the unfused path.
PROLOGUE_NONE, PROLOGUE_RMSNORM, PROLOGUE_SILU_MUL = 0, 1, 2


@triton.autotune(configs=_configs(), key=["N", "K", "PROLOGUE", "HAS_RES"])
@triton.jit
def _gemv_fused_kernel(x_ptr, w_ptr, y_ptr, g_ptr, res_ptr, N, K, stride_wn, eps,
                       PROLOGUE: tl.constexpr, HAS_RES: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    n_mask = rn < N
    dt = x_ptr.dtype.element_ty
    rstd = 1.0
    if PROLOGUE == 1:  # RMSNorm statistics over the whole row (K elements; cheap, from L2)
        ss = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + rk
            xv = tl.load(x_ptr + k, mask=k < K, other=0.0).to(tl.float32)
            ss += xv * xv
        rstd = (1.0 / tl.sqrt(tl.sum(ss, axis=0) / K + eps)).to(tl.float32)  # eps may arrive as fp64
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        k_mask = k < K
        w = tl.load(w_ptr + rn[:, None] * stride_wn + k[None, :], mask=n_mask[:, None] & k_mask[None, :],
                    other=0.0, eviction_policy="evict_first")
        if PROLOGUE == 1:  # g * (x * rstd).to(dt), as transformers' LlamaRMSNorm
            xv = tl.load(x_ptr + k, mask=k_mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + k, mask=k_mask, other=0.0)
            xv = (g * (xv * rstd).to(dt)).to(tl.float32)
        elif PROLOGUE == 2:  # silu(gate) * up over x = [gate | up] (2K elements)
            gate = tl.load(x_ptr + k, mask=k_mask, other=0.0).to(tl.float32)
            up = tl.load(x_ptr + K + k, mask=k_mask, other=0.0)
            act = (gate / (1.0 + tl.exp(-gate))).to(dt)
            xv = (act * up).to(tl.float32)
        else:
            xv = tl.load(x_ptr + k, mask=k_mask, other=0.0).to(tl.float32)
        acc += w.to(tl.float32) * xv[None, :]
    y = tl.sum(acc, axis=1).to(dt)
    if HAS_RES:
        r = tl.load(res_ptr + rn, mask=n_mask, other=0.0)
        y = (r.to(tl.float32) + y.to(tl.float32)).to(dt)
    tl.store(y_ptr + rn, y, mask=n_mask)


def _launch_fused(x, w, g, res, eps: float, prologue: int, k: int) -> torch.Tensor:
    N = w.shape[0]
    y = torch.empty((1, N), device=x.device, dtype=x.dtype)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_N"]),)

    wrap_triton(_gemv_fused_kernel)[grid](x, w, y, g, res, N, k, w.stride(0), eps,
                                          PROLOGUE=prologue, HAS_RES=res is not x)
    return y


@triton_op("llama_fast::gemv", mutates_args=())
def gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """W @ x: x (1, K) contiguous, w (N, K) contiguous -> (1, N) in x.dtype."""
    return _launch_fused(x, w, x, x, 0.0, PROLOGUE_NONE, x.shape[1])


@triton_op("llama_fast::gemv_rmsnorm", mutates_args=())
def gemv_rmsnorm(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """W @ rmsnorm(x) * g: x (1, K), g (K,), w (N, K) -> (1, N)."""
    return _launch_fused(x, w, g, x, eps, PROLOGUE_RMSNORM, x.shape[1])


@triton_op("llama_fast::gemv_residual", mutates_args=())
def gemv_residual(x: torch.Tensor, w: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
    """res + W @ x: x (1, K), w (N, K), res (1, N) -> (1, N)."""
    return _launch_fused(x, w, x, res, 0.0, PROLOGUE_NONE, x.shape[1])


@triton_op("llama_fast::gemv_silu_mul_residual", mutates_args=())
def gemv_silu_mul_residual(gate_up: torch.Tensor, w: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
    """res + W @ (silu(gate) * up): gate_up (1, 2K) = [gate | up], w (N, K), res (1, N) -> (1, N)."""
    return _launch_fused(gate_up, w, gate_up, res, 0.0, PROLOGUE_SILU_MUL, gate_up.shape[1] // 2)


# ----------------------------------------------------------------------------------------------- attention
# Split-K decode attention over the static cache: one program per (batch*head, chunk of the cache), each
# keeping an online softmax over its chunk; a second kernel combines the chunks. Masked-out slots are never
# loaded (masked loads), so only the attended prefix of the cache is read.
ATTN_CHUNK = 128


@triton.jit
def _decode_attn_split_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, S, H, G, scale,
                              sq_b, sq_h, sk_b, sk_h, sk_s, sm_b, NSPLIT,
                              D: tl.constexpr, CHUNK: tl.constexpr, BLOCK_S: tl.constexpr):
    bh = tl.program_id(0)
    j = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // G
    rd = tl.arange(0, D)
    # float scalars may arrive as fp64 (inductor types a float argument by its value): keep the loop in fp32
    q = (tl.load(q_ptr + b * sq_b + h * sq_h + rd).to(tl.float32) * scale).to(tl.float32)
    m = tl.full((), float("-inf"), tl.float32)
    l = tl.zeros((), dtype=tl.float32)
    acc = tl.zeros((D,), dtype=tl.float32)
    for s0 in range(j * CHUNK, j * CHUNK + CHUNK, BLOCK_S):
        rs = s0 + tl.arange(0, BLOCK_S)
        ok = tl.load(mask_ptr + b * sm_b + rs, mask=rs < S, other=0) != 0
        kv_off = b * sk_b + hk * sk_h + rs[:, None] * sk_s + rd[None, :]
        k = tl.load(k_ptr + kv_off, mask=ok[:, None], other=0.0).to(tl.float32)
        scores = tl.where(ok, tl.sum(k * q[None, :], axis=1), float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        p = tl.exp(scores - m_safe)
        v = tl.load(v_ptr + kv_off, mask=ok[:, None], other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        l = l * alpha + tl.sum(p, axis=0)
        m = m_new
    out = bh * NSPLIT + j
    tl.store(m_ptr + out, m)
    tl.store(l_ptr + out, l)
    tl.store(acc_ptr + out * D + rd, acc)


@triton.jit
def _decode_attn_combine_kernel(m_ptr, l_ptr, acc_ptr, o_ptr, NSPLIT, D: tl.constexpr, SPLITS: tl.constexpr):
    bh = tl.program_id(0)
    rj = tl.arange(0, SPLITS)
    rd = tl.arange(0, D)
    jm = rj < NSPLIT
    m = tl.load(m_ptr + bh * NSPLIT + rj, mask=jm, other=float("-inf"))
    l = tl.load(l_ptr + bh * NSPLIT + rj, mask=jm, other=0.0)
    acc = tl.load(acc_ptr + (bh * NSPLIT + rj[:, None]) * D + rd[None, :], mask=jm[:, None], other=0.0)
    big = tl.max(m, axis=0)  # finite: the current position is always attended
    w = tl.where(m == float("-inf"), 0.0, tl.exp(m - big))
    o = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(o_ptr + bh * D + rd, o.to(o_ptr.dtype.element_ty))


@triton_op("llama_fast::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """One query per row: q (B, H, 1, D), k/v cache (B, Hkv, S, D), mask (B, S) bool -> (B, H, 1, D)."""
    B, H, _, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    nsplit = triton.cdiv(S, ATTN_CHUNK)
    m = torch.empty((B * H * nsplit,), device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)
    acc = torch.empty((B * H * nsplit, D), device=q.device, dtype=torch.float32)
    o = torch.empty((B, H, 1, D), device=q.device, dtype=q.dtype)
    wrap_triton(_decode_attn_split_kernel)[(B * H, nsplit)](
        q, k, v, mask, m, l, acc, S, H, H // Hkv, scale, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        k.stride(2), mask.stride(0), nsplit, D=D, CHUNK=ATTN_CHUNK, BLOCK_S=32)
    wrap_triton(_decode_attn_combine_kernel)[(B * H,)](m, l, acc, o, nsplit, D=D,
                                                         SPLITS=triton.next_power_of_2(nsplit))
    return o
