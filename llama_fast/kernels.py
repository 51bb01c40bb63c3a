"""Triton kernels for the memory-bound decode step (imported only on CUDA).

gemv: y (M, N) = x (M, K) @ W (N, K)^T for a few rows (decode), streaming W once with wide loads and an
fp32 accumulator. Registered with torch.library.triton_op so torch.compile keeps it inside the step graph.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

GEMV_MAX_ROWS = 8  # above this cuBLAS' GEMM is as good: W is re-used from registers/L2 across rows


def _configs():
    """A small search space (12 configs) keeps the cold autotune to a few seconds per shape."""
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=4, num_stages=stages)
            for bn in (8, 16, 32) for bk in (256, 512) for stages in (2, 3)]


@triton.autotune(configs=_configs(), key=["M", "N", "K"])
@triton.jit
def _gemv_kernel(x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    n_mask = rn < N
    m_mask = rm < M
    if BLOCK_M == 1:
        # one row: accumulate (BLOCK_N, BLOCK_K) partial products, reduce over K once at the end
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
    else:
        # a few rows: each W tile is loaded once and used for every row
        acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + rk
            k_mask = k < K
            w = tl.load(w_ptr + rn[:, None] * stride_wn + k[None, :], mask=n_mask[:, None] & k_mask[None, :],
                        other=0.0, eviction_policy="evict_first")
            xv = tl.load(x_ptr + rm[:, None] * stride_xm + k[None, :], mask=m_mask[:, None] & k_mask[None, :],
                         other=0.0)
            acc2 += tl.sum(w.to(tl.float32)[None, :, :] * xv.to(tl.float32)[:, None, :], axis=2)
        tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc2.to(y_ptr.dtype.element_ty),
                 mask=m_mask[:, None] & n_mask[None, :])


@triton_op("llama_fast::gemv", mutates_args=())
def gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (M, K) contiguous, w (N, K) contiguous, M <= GEMV_MAX_ROWS -> (M, N) in x.dtype."""
    M, K = x.shape
    N = w.shape[0]
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    block_m = 1 if M == 1 else triton.next_power_of_2(M)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_N"]),)

    wrap_triton(_gemv_kernel)[grid](x, w, y, M, N, K, x.stride(0), w.stride(0), y.stride(0), BLOCK_M=block_m)
    return y
