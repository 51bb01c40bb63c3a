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
