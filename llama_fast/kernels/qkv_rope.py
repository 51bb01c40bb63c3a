"""The wqkv GEMV of the batch-1 decode step with the RMSNorm prologue and, in its epilogue, RoPE and the K/V
cache write.

A program computes BLOCK_N/2 rows of one head's first half and the matching rows of its second half (RoPE pairs
d with d + D/2), rotates q and k, writes q to the output and k, v into the cache slot input_pos. This replaces
the two kernels per layer that rotated and scattered; the decode block is then nothing but our kernels
(model.Transformer.fused_block_is_kernels_only). wqkv may be quantized, as in gemv.py (dequant.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .configs import autotune_configs, heads_form, rows_config
from .dequant import WFMT_INT4, add_rows, int4_tile_loads, weight_format, words
from .gemv import (FUSED_ROWS_MAX, first_tiles, one_tile_config, persistent_grid, products, row_rstds,
                   row_sums, w_tiles, x_rows, x_totals)
from .pdl import PDL_OFF, gdc_launch_dependents, gdc_wait, launch_kwargs, use_pdl


@triton.jit
def _head_rows(blk, D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row block blk's head unit u (q heads, then k heads, then v heads), its dims d1 (HALF,) in the first half of
    the head and its rows r1 = u * D + d1 and r2 = r1 + D / 2."""
    HALF: tl.constexpr = BLOCK_N // 2
    u = blk // (D // BLOCK_N)
    d1 = (blk % (D // BLOCK_N)) * HALF + tl.arange(0, HALF)
    r1 = u * D + d1
    return u, d1, r1, r1 + D // 2


@triton.jit
def _rope_store(y1, y2, u, d1, r1, r2, q_ptr, kc_ptr, vc_ptr, cos_ptr, sin_ptr, pos_ptr, H, HKV, stride_ch,
                stride_cs, D: tl.constexpr):
    """RoPE with the signed sine table (-sin | +sin) on the rows' projections y1, y2 (fp32, already rounded to the
    model dtype): x * cos + swap_halves(x) * sin, each product rounded; then q, or the cache slot of k or v."""
    dt = q_ptr.dtype.element_ty
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


@triton.jit
def _rope_store_rows(y1s, y2s, u, d1, r1, r2, q_ptr, kc_ptr, vc_ptr, cos_ptr, sin_ptr, pos_ptr, H, HKV, stride_ch,
                     stride_cs, stride_qm, stride_cb, stride_rope, D: tl.constexpr, ROWS: tl.constexpr):
    """_rope_store for each row r: its projections y1s[r], y2s[r] (fp32, the model dtype's values), its cos / sin
    row, its q row and its batch entry of the caches."""
    for r in tl.static_range(ROWS):
        _rope_store(y1s[r], y2s[r], u, d1, r1, r2, q_ptr + r * stride_qm, kc_ptr + r * stride_cb,
                    vc_ptr + r * stride_cb, cos_ptr + r * stride_rope, sin_ptr + r * stride_rope, pos_ptr, H, HKV,
                    stride_ch, stride_cs, D)


@triton.jit
def _rounded(ys, dt, ROWS: tl.constexpr):
    """Each row's projection rounded to the model dtype, as transformers' q / k / v, in fp32 (all rows before any
    store: rounding inside the store loop compiles the int8 2-row form to more spills)."""
    out = ()
    for r in tl.static_range(ROWS):
        out = out + (ys[r].to(dt).to(tl.float32),)
    return out


@triton.autotune(configs=autotune_configs(), key=["N", "K", "D", "WFMT", "GROUP", "ROWS"])
@triton.jit
def _gemv_qkv_rope_kernel(x_ptr, w_ptr, q_ptr, kc_ptr, vc_ptr, g_ptr, ss_ptr, cos_ptr, sin_ptr, pos_ptr, s_ptr, o_ptr,
                          N, K, KW, NSS, stride_wn, stride_sn, eps, H, HKV, stride_ch,
                          stride_cs, stride_xm, stride_qm, stride_cb, stride_rope, stride_ssm,
                          D: tl.constexpr, NSS_BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
                          WFMT: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          PERSIST: tl.constexpr = 0, ROWS: tl.constexpr = 1):
    HALF: tl.constexpr = BLOCK_N // 2
    pid = tl.program_id(0)
    u, d1, r1, r2 = _head_rows(pid, D, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    dt = x_ptr.dtype.element_ty
    # the first K tile of the weights (and their scales) loads before the wait for the previous kernel (as in
    # gemv.py); rows r1 and r2 = r1 + D/2
    w1, w2, s1, o1, s2, o2 = first_tiles(w_ptr, s_ptr, o_ptr, r1, r1 < N, K, KW, D // 2, stride_wn, stride_sn, True,
                                         WFMT, GROUP, BLOCK_K)
    if USE_PDL != 0:
        gdc_wait()  # x and its partials come from the previous kernel; the cache slot is written after this
    if USE_PDL == 1:
        gdc_launch_dependents()
    rstds = row_rstds(ss_ptr, stride_ssm, NSS, K, eps, 1, NSS_BLOCK, ROWS)
    if PERSIST != 0:  # as gemv.py's persistent form: one K tile, x prepared once, the next block's tile loaded
        # before this one's products
        xs, sums = x_rows(x_ptr, stride_xm, g_ptr, 0, K, rstds, 1, WFMT, GROUP, BLOCK_K, ROWS)
        xtots = x_totals(sums, WFMT, ROWS)
        nprog = tl.num_programs(0)
        nblk = N // BLOCK_N
        for blk in range(pid, nblk, nprog):
            u_nx, d1_nx, r1_nx, r2_nx = _head_rows(blk + nprog, D, BLOCK_N)
            w1_nx, w2_nx, s1_nx, o1_nx, s2_nx, o2_nx = first_tiles(w_ptr, s_ptr, o_ptr, r1_nx, r1_nx < N, K, KW,
                                                                   D // 2, stride_wn, stride_sn, True, WFMT, GROUP,
                                                                   BLOCK_K)
            if USE_PDL == 2:
                if blk + nprog >= nblk:  # this program's last block
                    gdc_launch_dependents()
            y1s = row_sums(products((), w1, s1, o1, xs, sums, 1, WFMT, GROUP, HALF, BLOCK_K, ROWS), s1, xtots, WFMT,
                           ROWS)
            y2s = row_sums(products((), w2, s2, o2, xs, sums, 1, WFMT, GROUP, HALF, BLOCK_K, ROWS), s2, xtots, WFMT,
                           ROWS)
            _rope_store_rows(_rounded(y1s, dt, ROWS), _rounded(y2s, dt, ROWS), u, d1, r1, r2, q_ptr, kc_ptr, vc_ptr,
                             cos_ptr, sin_ptr, pos_ptr, H, HKV, stride_ch, stride_cs, stride_qm, stride_cb,
                             stride_rope, D, ROWS)
            w1, w2, s1, o1, s2, o2 = w1_nx, w2_nx, s1_nx, o1_nx, s2_nx, o2_nx
            u, d1, r1, r2 = u_nx, d1_nx, r1_nx, r2_nx
    else:  # as gemv.py's one-program-a-block form
        xs, sums = x_rows(x_ptr, stride_xm, g_ptr, 0, K, rstds, 1, WFMT, GROUP, BLOCK_K, ROWS)
        xacc = sums
        acc1 = products((), w1, s1, o1, xs, sums, 1, WFMT, GROUP, HALF, BLOCK_K, ROWS)
        acc2 = products((), w2, s2, o2, xs, sums, 1, WFMT, GROUP, HALF, BLOCK_K, ROWS)
        for k0 in range(BLOCK_K, K, BLOCK_K):
            if WFMT == 2:
                w1, w2, s1, o1, s2, o2 = int4_tile_loads(w_ptr, s_ptr, o_ptr, r1, r1 < N, k0, K, KW, D // 2,
                                                         stride_wn, stride_sn, True, BLOCK_K, GROUP)
            elif WFMT == 1:
                w1, w2 = words(w_ptr, r1, r1 < N, k0 // 4, KW, D // 2, stride_wn, True, BLOCK_K // 4)
            else:
                w1, w2 = w_tiles(w_ptr, r1, r1 < N, k0 + rk, K, D // 2, stride_wn, True)
            xs, sums = x_rows(x_ptr, stride_xm, g_ptr, k0, K, rstds, 1, WFMT, GROUP, BLOCK_K, ROWS)
            if WFMT == 1:
                xacc = add_rows(xacc, sums, ROWS)
            acc1 = products(acc1, w1, s1, o1, xs, sums, 0, WFMT, GROUP, HALF, BLOCK_K, ROWS)
            acc2 = products(acc2, w2, s2, o2, xs, sums, 0, WFMT, GROUP, HALF, BLOCK_K, ROWS)
        if USE_PDL == 2:
            gdc_launch_dependents()
        xtots = x_totals(xacc, WFMT, ROWS)
        _rope_store_rows(_rounded(row_sums(acc1, s1, xtots, WFMT, ROWS), dt, ROWS),
                         _rounded(row_sums(acc2, s2, xtots, WFMT, ROWS), dt, ROWS), u, d1, r1, r2, q_ptr, kc_ptr,
                         vc_ptr, cos_ptr, sin_ptr, pos_ptr, H, HKV, stride_ch, stride_cs, stride_qm, stride_cb,
                         stride_rope, D, ROWS)


@triton_op("llama_fast::gemv_rmsnorm_qkv_rope", mutates_args={"k_cache", "v_cache"})
def gemv_rmsnorm_qkv_rope(x: torch.Tensor, ss: torch.Tensor, g: torch.Tensor, wqkv: torch.Tensor, eps: float,
                          cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          input_pos: torch.Tensor, n_heads: int, pdl: int = PDL_OFF,
                          scales: torch.Tensor | None = None, offsets: torch.Tensor | None = None,
                          group: int = 0) -> torch.Tensor:
    """Batch-1 decode: q (1, H*D) = RoPE(wqkv @ rmsnorm(x) * g)[:H*D]; rotated k and v written into
    k_cache / v_cache (1, Hkv, S, D) at slot input_pos (1,). cos, sin (D,): this position's tables (sin
    signed: -sin on the first half). Every BLOCK_N of the search space (8..32) must divide D
    (model.ROPE_MIN_HEAD_DIM). pdl: a PDL_* mode, applied where it can be (pdl.use_pdl). scales, offsets,
    group: a quantized wqkv, as in gemv.gemv."""
    kernel, grid, args, kwargs, q = qkv_rope_call(x, ss, g, wqkv, eps, cos, sin, k_cache, v_cache, input_pos, n_heads,
                                                  use_pdl(x, pdl), scales, offsets, group)
    wrap_triton(kernel)[grid](*args, **kwargs)
    return q


def qkv_rope_call(x, ss, g, wqkv, eps: float, cos, sin, k_cache, v_cache, input_pos, n_heads: int, pdl: int, scales,
                  offsets, group: int) -> tuple:
    """(kernel, grid, arguments, keywords, q) of gemv_rmsnorm_qkv_rope's launch, pdl already decided (a use_pdl
    result), as gemv.fused_call. Also what scripts/sass_probe.py compiles offline. x (M, K): M rows (1, or
    2..FUSED_ROWS_MAX: kernels/gemv_rows.py) with ss (NSS,) at one row, else (M, NSS), cos / sin (D,) at one row,
    else (M, D), each row's own tables; row m writes batch entry m of the caches."""
    M, K = x.shape
    if M > FUSED_ROWS_MAX:
        raise ValueError(f"the qkv+RoPE GEMV takes 1..{FUSED_ROWS_MAX} rows, got {M}")
    D = cos.shape[-1]
    hkv = k_cache.shape[1]
    q = torch.empty((M, n_heads * D), device=x.device, dtype=x.dtype)
    wfmt, group, wk, kw = weight_format(x, wqkv, scales, offsets, group, wqkv.shape[0])
    s = scales if scales is not None else q  # unused pointer arguments get q (never read)
    o = offsets if offsets is not None else s

    def grid(meta):
        return persistent_grid((n_heads + 2 * hkv) * (D // meta["BLOCK_N"]), meta, x.device)

    form = "qkv_rope" + ("", "_int8", "_int4")[wfmt]
    config = rows_config(form, wqkv.shape[0], K, M, heads_form(form, n_heads, hkv))
    kernel, config = (_gemv_qkv_rope_kernel.fn, config) if config is not None else (_gemv_qkv_rope_kernel, {})
    config = one_tile_config(config, K)
    if M > 1 and (D % config.get("BLOCK_N", D) or config.get("BLOCK_N", 2) % 2):
        raise ValueError(f"the qkv+RoPE GEMV's tile of {config['BLOCK_N']} rows must be even and divide D = {D}")
    row_stride = (lambda t: t.stride(0) if M > 1 else 0)  # 0 at one row: the rows loop is one pass
    args = (x, wk, q, k_cache, v_cache, g, ss, cos, sin, input_pos, s, o, wqkv.shape[0], K, kw, ss.shape[-1],
            wk.stride(0), s.stride(0) if wfmt == WFMT_INT4 else 0, eps, n_heads, hkv,
            k_cache.stride(1), k_cache.stride(2), row_stride(x), row_stride(q), row_stride(k_cache), row_stride(cos),
            row_stride(ss))
    kwargs = dict(D=D, NSS_BLOCK=triton.next_power_of_2(ss.shape[-1]), USE_PDL=pdl, WFMT=wfmt, GROUP=group, ROWS=M,
                  **config, **launch_kwargs(pdl))
    return kernel, grid, args, kwargs, q
