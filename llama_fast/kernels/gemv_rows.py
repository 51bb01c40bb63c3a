"""The decode GEMV of 2-4 rows: the kernels-only step's four ops (gemm.py's small_m_qkv_rope, small_m_residual_ss,
small_m_swiglu_ss, small_m_rmsnorm_ss: the same names and arguments) as the batch-1 GEMV's loop (gemv.py), each
weight tile read once, dequantized once in registers and multiplied by every row on the CUDA cores.

Why: the small-M GEMM turns each quantized weight into a tensor-core operand and pads the rows to 16; at 2-4 rows
that conversion, not the bytes, sets its speed (docs/PERF.md: int4 at batch 2 read its weights at about 1 TB/s).
The batch-1 GEMV's subnormal form (dequant.py) makes an int4 product in one mask and one FFMA: a second row adds
one FFMA a weight, not another conversion. Dense weights keep the GEMM (a GEMV row costs a conversion and an FFMA
per weight, the tensor cores nothing: the CUDA-core form lost at 2 rows, PERF's tried-and-rejected table).

The products are (ROWS, rows of the tile, words) in fp32; rows past M load zeros and store nothing. Each output
rounds where the GEMM's epilogues round (gemm._finish, gemm._rope_cache: the same functions), so the step's
numbers differ from the GEMM's only in the summation order. One program per row block (no persistent form, no K
split: a 4096-row projection at BLOCK_N 8 is 512 programs). The configs are the batch-1 forms' (configs.py:
this GPU's table or its tuned choice) without PERSIST, so an unmeasured GPU inherits the batch-1 tuning; a
launch form "rows_<batch-1 form>" (e.g. rows_residual_int4) takes a perf_lab.py --config-trials override.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .configs import heads_form, overridden, pinned_config
from .dequant import SUM_SCALE, WFMT_DENSE, WFMT_INT4, WFMT_INT8, X_SCALE, int4_tile_loads, int8_x, subnormal, \
    weight_format, words, x_sum4
from .gemm import _finish, _rope_cache
from .gemv import first_tiles, w_tiles
from .pdl import PDL_OFF, gdc_launch_dependents, gdc_wait, launch_kwargs, use_pdl

# The rows a launch takes, by weight format: quantized up to 4 (docs/PERF.md: "The quantized decode GEMV of 2-4
# rows"); dense weights never (0)
GEMV_ROWS_MAX = {WFMT_DENSE: 0, WFMT_INT8: 4, WFMT_INT4: 4}

PROLOGUE_NONE, PROLOGUE_RMSNORM = 0, 1
EPILOGUE_NONE, EPILOGUE_RESIDUAL_SS, EPILOGUE_SWIGLU, EPILOGUE_ROPE_CACHE = 0, 1, 2, 3
_FORMS = {EPILOGUE_NONE: "rmsnorm", EPILOGUE_RESIDUAL_SS: "residual", EPILOGUE_SWIGLU: "swiglu",
          EPILOGUE_ROPE_CACHE: "qkv_rope"}  # the batch-1 form whose config a launch takes


def rows_apply(rows: int, w: torch.Tensor, scales: torch.Tensor | None, offsets: torch.Tensor | None) -> bool:
    """Whether a projection of `rows` input rows by this weight (dense, or quant.QuantLinear's packed tensors)
    runs here rather than on the small-M GEMM."""
    wfmt = WFMT_DENSE if scales is None else WFMT_INT8 if offsets is None else WFMT_INT4
    return 2 <= rows <= GEMV_ROWS_MAX[wfmt]


@triton.jit
def _x_rows(x_ptr, g_ptr, rm, m_mask, k0, K, stride_xm, rstd, PROLOGUE: tl.constexpr, NW: tl.constexpr,
            PER: tl.constexpr):
    """Rows rm of the input's K tile k0..k0 + NW * PER in fp32, (ROWS, NW, PER): element j of weight word w at
    [:, w, j]; the RMSNorm prologue g * (x * rstd[m]).to(dtype), as transformers' LlamaRMSNorm."""
    dt = x_ptr.dtype.element_ty
    k = k0 + tl.arange(0, NW)[:, None] * PER + tl.arange(0, PER)[None, :]
    km = k < K
    xv = tl.load(x_ptr + rm[:, None, None] * stride_xm + k[None, :, :], mask=m_mask[:, None, None] & km[None, :, :],
                 other=0.0)
    if PROLOGUE == 1:
        g = tl.load(g_ptr + k, mask=km, other=0.0)
        xv = g[None, :, :] * (xv.to(tl.float32) * rstd[:, None, None]).to(dt)
    return xv.to(tl.float32)


@triton.jit
def _split_rows(xt, R: tl.constexpr, NW: tl.constexpr, PER: tl.constexpr):
    """dequant.split_words for every row: (R, NW, PER) -> PER (R, NW) tensors, element j of each word."""
    if PER == 4:
        a, b = tl.split(tl.reshape(xt, (R, NW, 2, 2)))  # j even | j odd
        x0, x2 = tl.split(a)
        x1, x3 = tl.split(b)
        return x0, x1, x2, x3
    else:
        a, b = tl.split(tl.reshape(xt, (R, NW, 4, 2)))  # 0 2 4 6 | 1 3 5 7
        a0, a1 = tl.split(tl.reshape(a, (R, NW, 2, 2)))  # 0 4 | 2 6
        b0, b1 = tl.split(tl.reshape(b, (R, NW, 2, 2)))  # 1 5 | 3 7
        x0, x4 = tl.split(a0)
        x2, x6 = tl.split(a1)
        x1, x5 = tl.split(b0)
        x3, x7 = tl.split(b1)
        return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _int8_fma_rows(acc, w, xs):
    """dequant.int8_fma for every row: acc (R, BLOCK_N, NW) + u x 2^-49, each weight's float made once."""
    u = w ^ 0x80808080
    uh = u >> 16
    acc += subnormal(u & 0xFF)[None, :, :] * xs[0][:, None, :]
    acc += subnormal(u & 0xFF00)[None, :, :] * xs[1][:, None, :]
    acc += subnormal(uh & 0xFF)[None, :, :] * xs[2][:, None, :]
    acc += subnormal(uh & 0xFF00)[None, :, :] * xs[3][:, None, :]
    return acc


@triton.jit
def _int4_x_rows(xs, R: tl.constexpr, NG: tl.constexpr, WG: tl.constexpr):
    """dequant.int4_x for every row: (the scaled x, each row's sum of x per group (R, NG))."""
    xsum = tl.sum(tl.reshape(((xs[0] + xs[1]) + (xs[2] + xs[3])) + ((xs[4] + xs[5]) + (xs[6] + xs[7])),
                             (R, NG, WG)), axis=2)
    X0 = X_SCALE
    return (xs[0] * X0, xs[1] * (X0 / 16), xs[2] * (X0 / 256), xs[3] * (X0 / 4096), xs[4] * (X0 / 65536),
            xs[5] * (X0 / 1048576), xs[6] * X0, xs[7] * X0), xsum


@triton.jit
def _int4_groups_rows(w, xs, s, o, xsum, R: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr,
                      WG: tl.constexpr):
    """dequant.int4_dot then int4_groups for every row: each group's share of W @ x, (R, BLOCK_N, NG)."""
    p = subnormal(w & 0xF)[None, :, :] * xs[0][:, None, :]
    p += subnormal(w & 0xF0)[None, :, :] * xs[1][:, None, :]
    p += subnormal(w & 0xF00)[None, :, :] * xs[2][:, None, :]
    p += subnormal(w & 0xF000)[None, :, :] * xs[3][:, None, :]
    p += subnormal(w & 0xF0000)[None, :, :] * xs[4][:, None, :]
    p += subnormal(w & 0xF00000)[None, :, :] * xs[5][:, None, :]
    p += subnormal((w >> 24) & 0xF)[None, :, :] * xs[6][:, None, :]
    p += subnormal(w >> 28)[None, :, :] * xs[7][:, None, :]
    fsum = tl.sum(tl.reshape(p, (R, BLOCK_N, NG, WG)), axis=3)
    return (s * SUM_SCALE)[None, :, :] * fsum + o[None, :, :] * xsum[:, None, :]


@triton.jit
def _gemv_rows_kernel(x_ptr, w_ptr, y_ptr, g_ptr, res_ptr, ss_in_ptr, ss_out_ptr, s_ptr, o_ptr, cos_ptr, sin_ptr,
                      kc_ptr, vc_ptr, pos_ptr, M, N, K, KW, NSS, stride_xm, stride_ym, stride_rm, stride_ssm,
                      stride_wn, stride_sn, stride_rope, stride_cb, stride_ch, stride_cs, eps, H, HKV,
                      PROLOGUE: tl.constexpr, EPILOGUE: tl.constexpr, NSS_BLOCK: tl.constexpr,
                      USE_PDL: tl.constexpr, WFMT: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr,
                      D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rm = tl.arange(0, ROWS)
    m_mask = rm < M
    dt = x_ptr.dtype.element_ty
    TWO: tl.constexpr = EPILOGUE == 2 or EPILOGUE == 3
    if EPILOGUE == 3:  # a program's rows: dims d1 of head unit u's first half, and their partners d1 + D/2
        NA: tl.constexpr = BLOCK_N // 2
        u = pid // (D // BLOCK_N)
        d1 = (pid % (D // BLOCK_N)) * NA + tl.arange(0, NA)
        rn = u * D + d1
        offset = D // 2
    else:  # BLOCK_N rows (SwiGLU: the gate rows, the up rows N further down)
        NA: tl.constexpr = BLOCK_N
        rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        offset = N
    n_mask = rn < N
    # the first K tile of the weights and their scales: nothing writes them, so they load before the wait
    w, w2, s, o, s2, o2 = first_tiles(w_ptr, s_ptr, o_ptr, rn, n_mask, K, KW, offset, stride_wn, stride_sn, TWO,
                                      WFMT, GROUP, BLOCK_K)
    if USE_PDL != 0:
        gdc_wait()  # x, its partials and the residual come from earlier kernels
    if USE_PDL == 1:
        gdc_launch_dependents()
    rstd = tl.zeros((ROWS,), dtype=tl.float32)
    if PROLOGUE == 1:  # each row's RMSNorm statistics from its sum-of-squares partials
        rp = tl.arange(0, NSS_BLOCK)
        ss = tl.load(ss_in_ptr + rm[:, None] * stride_ssm + rp[None, :],
                     mask=m_mask[:, None] & (rp < NSS)[None, :], other=0.0)
        rstd = (1.0 / tl.sqrt(tl.sum(ss, axis=1) / K + eps)).to(tl.float32)
    if WFMT == 2:  # int4: per-group sums, scaled and offset, (ROWS, NA, groups per tile)
        NG: tl.constexpr = BLOCK_K // GROUP
        WG: tl.constexpr = GROUP // 8
        xs = _split_rows(_x_rows(x_ptr, g_ptr, rm, m_mask, 0, K, stride_xm, rstd, PROLOGUE, BLOCK_K // 8, 8),
                         ROWS, BLOCK_K // 8, 8)
        xs, xsum = _int4_x_rows(xs, ROWS, NG, WG)
        acc = _int4_groups_rows(w, xs, s, o, xsum, ROWS, NA, NG, WG)
        acc2 = acc
        if TWO:
            acc2 = _int4_groups_rows(w2, xs, s2, o2, xsum, ROWS, NA, NG, WG)
        for k0 in range(BLOCK_K, K, BLOCK_K):
            w, w2, s, o, s2, o2 = int4_tile_loads(w_ptr, s_ptr, o_ptr, rn, n_mask, k0, K, KW, offset, stride_wn,
                                                  stride_sn, TWO, BLOCK_K, GROUP)
            xs = _split_rows(_x_rows(x_ptr, g_ptr, rm, m_mask, k0, K, stride_xm, rstd, PROLOGUE, BLOCK_K // 8, 8),
                             ROWS, BLOCK_K // 8, 8)
            xs, xsum = _int4_x_rows(xs, ROWS, NG, WG)
            acc += _int4_groups_rows(w, xs, s, o, xsum, ROWS, NA, NG, WG)
            if TWO:
                acc2 += _int4_groups_rows(w2, xs, s2, o2, xsum, ROWS, NA, NG, WG)
        if USE_PDL == 2:
            gdc_launch_dependents()
        y = tl.sum(acc, axis=2)
        up = tl.sum(acc2, axis=2)
    elif WFMT == 1:  # int8: sums of u * x per row and position, and of x; the constant part and scale at the end
        xs = _split_rows(_x_rows(x_ptr, g_ptr, rm, m_mask, 0, K, stride_xm, rstd, PROLOGUE, BLOCK_K // 4, 4),
                         ROWS, BLOCK_K // 4, 4)
        xacc = x_sum4(xs)
        xs = int8_x(xs)
        acc = _int8_fma_rows(tl.zeros((ROWS, NA, BLOCK_K // 4), dtype=tl.float32), w, xs)
        acc2 = acc
        if TWO:
            acc2 = _int8_fma_rows(tl.zeros((ROWS, NA, BLOCK_K // 4), dtype=tl.float32), w2, xs)
        for k0 in range(BLOCK_K, K, BLOCK_K):
            w, w2 = words(w_ptr, rn, n_mask, k0 // 4, KW, offset, stride_wn, TWO, BLOCK_K // 4)
            xs = _split_rows(_x_rows(x_ptr, g_ptr, rm, m_mask, k0, K, stride_xm, rstd, PROLOGUE, BLOCK_K // 4, 4),
                             ROWS, BLOCK_K // 4, 4)
            xacc += x_sum4(xs)
            xs = int8_x(xs)
            acc = _int8_fma_rows(acc, w, xs)
            if TWO:
                acc2 = _int8_fma_rows(acc2, w2, xs)
        if USE_PDL == 2:
            gdc_launch_dependents()
        xtot = 128.0 * tl.sum(xacc, axis=1)  # (ROWS,)
        y = s[None, :] * (SUM_SCALE * tl.sum(acc, axis=2) - xtot[:, None])
        up = s2[None, :] * (SUM_SCALE * tl.sum(acc2, axis=2) - xtot[:, None])
    else:
        rk = tl.arange(0, BLOCK_K)
        xf = tl.reshape(_x_rows(x_ptr, g_ptr, rm, m_mask, 0, K, stride_xm, rstd, PROLOGUE, BLOCK_K, 1),
                        (ROWS, BLOCK_K))
        acc = w.to(tl.float32)[None, :, :] * xf[:, None, :]  # (ROWS, NA, BLOCK_K) fp32
        acc2 = acc
        if TWO:
            acc2 = w2.to(tl.float32)[None, :, :] * xf[:, None, :]
        for k0 in range(BLOCK_K, K, BLOCK_K):
            w, w2 = w_tiles(w_ptr, rn, n_mask, k0 + rk, K, offset, stride_wn, TWO)
            xf = tl.reshape(_x_rows(x_ptr, g_ptr, rm, m_mask, k0, K, stride_xm, rstd, PROLOGUE, BLOCK_K, 1),
                            (ROWS, BLOCK_K))
            acc += w.to(tl.float32)[None, :, :] * xf[:, None, :]
            if TWO:
                acc2 += w2.to(tl.float32)[None, :, :] * xf[:, None, :]
        if USE_PDL == 2:
            gdc_launch_dependents()
        y = tl.sum(acc, axis=2)
        up = tl.sum(acc2, axis=2)
    if EPILOGUE == 3:  # RoPE on the projection rounded as transformers' q / k / v, then q out, k and v cached
        _rope_cache(tl.trans(y.to(dt).to(tl.float32)), tl.trans(up.to(dt).to(tl.float32)), y_ptr, cos_ptr, sin_ptr,
                    kc_ptr, vc_ptr, pos_ptr, u, d1, rm, m_mask, H, HKV, stride_ym, stride_cb, stride_ch, stride_cs,
                    stride_rope, D)
    else:
        mask = m_mask[:, None] & n_mask[None, :]
        out = _finish(y, up, y_ptr + rm[:, None] * stride_ym + rn[None, :], res_ptr + rm[:, None] * stride_rm
                      + rn[None, :], mask, EPILOGUE)
        if EPILOGUE == 1:  # this program's sum-of-squares partial of each row, for the next RMSNorm
            of = out.to(tl.float32)
            tl.store(ss_out_ptr + rm * tl.num_programs(0) + pid, tl.sum(of * of, axis=1), mask=m_mask)


def rows_config(form: str, n: int, K: int, tuned_as: str | None = None) -> dict:
    """The launch config of a rows form: an override of "rows_<form>" (perf_lab.py --config-trials), else the
    batch-1 form's config on this GPU without PERSIST."""
    found = overridden("rows_" + form, n, K)
    if found:
        return found
    config = pinned_config(form, n, K, tuned_as) or {}
    return {k: v for k, v in config.items() if k != "PERSIST"}


def rows_call(x, w, res, g, ss, eps: float, prologue: int, epilogue: int, pdl: int, scales, offsets, group: int,
              rope=None) -> tuple:
    """(kernel, grid, arguments, keywords, y, partials or None) of a launch, pdl already decided (a use_pdl
    result). Also what scripts/sass_probe.py compiles offline. rope: (cos, sin (M, D), k_cache, v_cache,
    input_pos (1,), n_heads) with EPILOGUE_ROPE_CACHE, as gemm.gemm_call takes it."""
    M, K = x.shape
    if not 2 <= M <= max(GEMV_ROWS_MAX.values()):
        raise ValueError(f"the rows GEMV takes 2..{max(GEMV_ROWS_MAX.values())} rows, got {M}")
    swiglu = epilogue == EPILOGUE_SWIGLU
    n = w.shape[0] // 2 if swiglu else w.shape[0]
    wfmt, group, wk, kw = weight_format(x, w, scales, offsets, group, w.shape[0])
    form = _FORMS[epilogue] + ("", "_int8", "_int4")[wfmt]
    rope_d, heads, hkv, tuned_as = 0, 0, 0, None
    if epilogue == EPILOGUE_ROPE_CACHE:
        cos, sin, k_cache, v_cache, input_pos, heads = rope
        rope_d, hkv = cos.shape[-1], k_cache.shape[1]
        tuned_as = heads_form(form, heads, hkv)
    config = dict(rows_config(form, n, K, tuned_as))
    bn = config.pop("BLOCK_N")
    if rope_d and (rope_d % bn or n != (heads + 2 * hkv) * rope_d):
        raise ValueError(f"RoPE in the rows GEMV: {n} rows for {heads} + 2 x {hkv} heads of {rope_d}, tile {bn}")
    x = x if x.stride(1) == 1 else x.contiguous()
    y = torch.empty((M, heads * rope_d if rope_d else n), device=x.device, dtype=x.dtype)
    programs = n // bn if rope_d else triton.cdiv(n, bn)
    ss_out = (torch.empty((M, programs), device=x.device, dtype=torch.float32) if epilogue == EPILOGUE_RESIDUAL_SS
              else None)
    if prologue and (ss is None or ss.shape[0] != M or ss.stride(1) != 1):
        raise ValueError("the RMSNorm prologue takes ss (M, NSS) with unit column stride")
    # unused pointer arguments get y (never read)
    s = scales if scales is not None else y
    o = offsets if offsets is not None else s
    if wfmt == WFMT_INT4 and s.stride(1) != 1:
        s, o = s.contiguous(), o.contiguous()
    res = res if res is not None else y
    g = g if g is not None else y
    ss_in = ss if prologue else y
    rope_args = ((cos, sin, k_cache, v_cache, input_pos) if rope_d else (y,) * 5)
    cache_strides = (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2)) if rope_d else (0, 0, 0)
    args = (x, wk, y, g, res, ss_in, ss_out if ss_out is not None else y, s, o, *rope_args, M, n, K, kw,
            ss.shape[1] if prologue else 0, x.stride(0), y.stride(0), res.stride(0), ss_in.stride(0),
            wk.stride(0), s.stride(0) if wfmt == WFMT_INT4 else 0, cos.stride(0) if rope_d else 0, *cache_strides,
            float(eps), heads, hkv)
    kwargs = dict(PROLOGUE=prologue, EPILOGUE=epilogue,
                  NSS_BLOCK=triton.next_power_of_2(ss.shape[1]) if prologue else 1, USE_PDL=pdl, WFMT=wfmt,
                  GROUP=group, ROWS=triton.next_power_of_2(M), D=rope_d, BLOCK_N=bn, **config, **launch_kwargs(pdl))
    return _gemv_rows_kernel, (programs,), args, kwargs, y, ss_out


def _launch(x, w, res, g, ss, eps: float, prologue: int, epilogue: int, pdl: int, scales, offsets, group: int,
            rope=None):
    kernel, grid, args, kwargs, y, ss_out = rows_call(x, w, res, g, ss, eps, prologue, epilogue, use_pdl(x, pdl),
                                                      scales, offsets, group, rope)
    wrap_triton(kernel)[grid](*args, **kwargs)
    return y if ss_out is None else (y, ss_out)


# The four ops of the kernels-only decode step (model.Block.small_m_decode), as gemm.py's of the same names

def small_m_qkv_rope(x: torch.Tensor, wqkv: torch.Tensor, ss: torch.Tensor, g: torch.Tensor, eps: float,
                     cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     input_pos: torch.Tensor, n_heads: int, pdl: int = PDL_OFF, scales=None, offsets=None,
                     group: int = 0) -> torch.Tensor:
    """gemm.small_m_qkv_rope: q (M, n_heads * D), the rotated k and v of row m into the caches at input_pos."""
    return _launch(x, wqkv, None, g, ss, eps, PROLOGUE_RMSNORM, EPILOGUE_ROPE_CACHE, pdl, scales, offsets, group,
                   rope=(cos, sin, k_cache, v_cache, input_pos, n_heads))


def small_m_residual_ss(x: torch.Tensor, w: torch.Tensor, res: torch.Tensor, pdl: int = PDL_OFF, scales=None,
                        offsets=None, group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """gemm.small_m_residual_ss: (res + x @ w^T, its rows' sum-of-squares partials (M, programs) fp32)."""
    return _launch(x, w, res, None, None, 0.0, PROLOGUE_NONE, EPILOGUE_RESIDUAL_SS, pdl, scales, offsets, group)


def small_m_swiglu_ss(x: torch.Tensor, w13: torch.Tensor, ss: torch.Tensor, g: torch.Tensor, eps: float,
                      pdl: int = PDL_OFF, scales=None, offsets=None, group: int = 0) -> torch.Tensor:
    """gemm.small_m_swiglu_ss: silu(gate) * up of rmsnorm(x) @ w13^T."""
    return _launch(x, w13, None, g, ss, eps, PROLOGUE_RMSNORM, EPILOGUE_SWIGLU, pdl, scales, offsets, group)


def small_m_rmsnorm_ss(x: torch.Tensor, w: torch.Tensor, ss: torch.Tensor, g: torch.Tensor, eps: float,
                       pdl: int = PDL_OFF, scales=None, offsets=None, group: int = 0) -> torch.Tensor:
    """gemm.small_m_rmsnorm_ss: rmsnorm(x) @ w^T (the head)."""
    return _launch(x, w, None, g, ss, eps, PROLOGUE_RMSNORM, EPILOGUE_NONE, pdl, scales, offsets, group)
