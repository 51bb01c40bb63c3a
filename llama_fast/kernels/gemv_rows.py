"""The kernels-only decode step's four ops at 2 rows with quantized weights, as the fused decode GEMVs (gemv.py,
qkv_rope.py) over every row: gemm.py's small_m_qkv_rope, small_m_residual_ss, small_m_swiglu_ss and
small_m_rmsnorm_ss, the same names and arguments, so model.small_m_ops hands a projection to either module.

Why: the small-M GEMM turns each quantized weight into a tensor-core operand and pads the rows to 16; at 2-4 rows
that conversion, not the bytes, sets its speed (docs/PERF.md: int4's batch-2 step read its weights at 0.92 TB/s).
The GEMV's subnormal form (dequant.py) makes an int4 product in one mask and one FFMA: with the rows of a step
sharing each weight tile, each further row adds one FFMA a weight, not another conversion. The GEMV kernels take
the rows as a constexpr ROWS (tuples of per-row values, unrolled), so at one row they compile to the batch-1
code. Dense weights keep the GEMM at every row count (a CUDA-core form lost there: PERF's tried-and-rejected
table).

Rows (ROWS_MAX): the kernels take up to gemv.FUSED_ROWS_MAX (4), the step hands them 2. Every row holds its own
accumulators and x tile, so registers grow with the rows: on an H200 at batch 3 int4 ran 4.113 ms/step against
the GEMM's 3.992 and int8 6.424 against the compiled step's 4.800; at 4 rows the int8 wqkv form spills
(docs/PERF.md). At batch 2, with the configs of 2 rows: int4 2.938 against 3.821, int8 3.617 against 4.631.

Configs: configs.rows_config (the one-row form's, with the H200's changes for 2 rows, or an override of the form
"rows_<form>": scripts/perf_lab.py --config-trials).
"""
from __future__ import annotations

import torch
from torch.library import wrap_triton

from .dequant import WFMT_DENSE, WFMT_INT4, WFMT_INT8
from .gemv import (EPILOGUE_NONE, EPILOGUE_RESIDUAL_SS, EPILOGUE_SWIGLU, PROLOGUE_NONE, PROLOGUE_RMSNORM,
                   _launch_fused)
from .pdl import PDL_OFF, use_pdl
from .qkv_rope import qkv_rope_call

# The rows a step's projection takes here, by weight format (at most FUSED_ROWS_MAX); dense weights never
ROWS_MAX = {WFMT_DENSE: 0, WFMT_INT8: 2, WFMT_INT4: 2}


def rows_apply(rows: int, w: torch.Tensor, scales: torch.Tensor | None, offsets: torch.Tensor | None) -> bool:
    """Whether a projection of `rows` input rows by this weight (dense, or quant.QuantLinear's packed tensors)
    runs here rather than on the small-M GEMM."""
    wfmt = WFMT_DENSE if scales is None else WFMT_INT8 if offsets is None else WFMT_INT4
    return 2 <= rows <= ROWS_MAX[wfmt]


def small_m_qkv_rope(x: torch.Tensor, wqkv: torch.Tensor, ss: torch.Tensor, g: torch.Tensor, eps: float,
                     cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     input_pos: torch.Tensor, n_heads: int, pdl: int = PDL_OFF, scales=None, offsets=None,
                     group: int = 0) -> torch.Tensor:
    """gemm.small_m_qkv_rope: q (M, n_heads * D); the rotated k and v of row m into batch entry m of the caches at
    slot input_pos (1,). ss (M, NSS), cos and sin (M, D) with unit column stride."""
    kernel, grid, args, kwargs, q = qkv_rope_call(x, ss, g, wqkv, eps, cos, sin, k_cache, v_cache, input_pos,
                                                  n_heads, use_pdl(x, pdl), scales, offsets, group)
    wrap_triton(kernel)[grid](*args, **kwargs)
    return q


def small_m_residual_ss(x: torch.Tensor, w: torch.Tensor, res: torch.Tensor, pdl: int = PDL_OFF, scales=None,
                        offsets=None, group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """gemm.small_m_residual_ss: (res + x @ w^T, its rows' sum-of-squares partials (M, cdiv(N, 8)) fp32)."""
    return _launch_fused(x, w, x, res, x, 0.0, PROLOGUE_NONE, EPILOGUE_RESIDUAL_SS, w.shape[0], pdl, scales, offsets,
                         group)


def small_m_swiglu_ss(x: torch.Tensor, w13: torch.Tensor, ss: torch.Tensor, g: torch.Tensor, eps: float,
                      pdl: int = PDL_OFF, scales=None, offsets=None, group: int = 0) -> torch.Tensor:
    """gemm.small_m_swiglu_ss: silu(gate) * up of rmsnorm(x) @ w13^T."""
    return _launch_fused(x, w13, g, x, ss, eps, PROLOGUE_RMSNORM, EPILOGUE_SWIGLU, w13.shape[0] // 2, pdl, scales,
                         offsets, group)[0]


def small_m_rmsnorm_ss(x: torch.Tensor, w: torch.Tensor, ss: torch.Tensor, g: torch.Tensor, eps: float,
                       pdl: int = PDL_OFF, scales=None, offsets=None, group: int = 0) -> torch.Tensor:
    """gemm.small_m_rmsnorm_ss: rmsnorm(x) @ w^T (the head)."""
    return _launch_fused(x, w, g, x, ss, eps, PROLOGUE_RMSNORM, EPILOGUE_NONE, w.shape[0], pdl, scales, offsets,
                         group)[0]
