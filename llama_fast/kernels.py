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


@triton.autotune(configs=_configs(), key=["N", "K"])
@triton.jit
def _gemv_kernel(x_ptr, w_ptr, y_ptr, N, K, stride_wn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    n_mask = rn < N
    # accumulate (BLOCK_N, BLOCK_K) partial products in fp32, reduce over K once at the end
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        k_mask = k < K
        w = tl.load(w_ptr + rn[:, None] * stride_wn + k[None, :], mask=n_mask[:, None] & k_mask[None, :],
                    other=0.0, eviction_policy="evict_first")
        xv = tl.load(x_ptr + k, mask=k_mask, other=0.0)
        acc += w.to(tl.float32) * xv.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=n_mask)


@triton_op("llama_fast::gemv", mutates_args=())
def gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (1, K) contiguous, w (N, K) contiguous -> (1, N) in x.dtype."""
    K = x.shape[1]
    N = w.shape[0]
    y = torch.empty((1, N), device=x.device, dtype=x.dtype)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_N"]),)

    wrap_triton(_gemv_kernel)[grid](x, w, y, N, K, w.stride(0))
    return y


# ----------------------------------------------------------------------------------------------- fused
# The decode block as four kernels around attention: rmsnorm->GEMV (wqkv), GEMV->+residual (wo),
# rmsnorm->GEMV (w13), silu*mul->GEMV->+residual (w2). Each rounds where transformers' fp16 code rounds
# (normed x, silu, the product, the projection before the residual add), so only the GEMV's summation
# order differs from the unfused path.
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
        rstd = 1.0 / tl.sqrt(tl.sum(ss, axis=0) / K + eps)
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
