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

from .configs import autotune_configs, heads_form, pinned_config
from .dequant import (WFMT_INT4, int4_dot, int4_groups, int4_tile_loads, int4_x, int8_fma, int8_rows, int8_x,
                      weight_format, words, x_sum4)
from .gemv import first_tiles, one_tile_config, persistent_grid, w_tiles, x_tile, x_words
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


@triton.autotune(configs=autotune_configs(), key=["N", "K", "D", "WFMT", "GROUP"])
@triton.jit
def _gemv_qkv_rope_kernel(x_ptr, w_ptr, q_ptr, kc_ptr, vc_ptr, g_ptr, ss_ptr, cos_ptr, sin_ptr, pos_ptr, s_ptr, o_ptr,
                          N, K, KW, NSS, stride_wn, stride_sn, eps, H, HKV, stride_ch,
                          stride_cs, D: tl.constexpr, NSS_BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
                          WFMT: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          PERSIST: tl.constexpr = 0):
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
    rp = tl.arange(0, NSS_BLOCK)
    ss = tl.load(ss_ptr + rp, mask=rp < NSS, other=0.0)
    # float scalars may arrive as fp64 (inductor types a float argument by its value): keep fp32
    rstd = (1.0 / tl.sqrt(tl.sum(ss, axis=0) / K + eps)).to(tl.float32)
    if PERSIST != 0:  # as gemv.py's persistent form: one K tile, x prepared once, the next block's tile loaded
        # before this one's products
        NG: tl.constexpr = BLOCK_K // GROUP if WFMT == 2 else 1
        WG: tl.constexpr = GROUP // 8 if WFMT == 2 else 1
        if WFMT == 2:
            xs = x_words(x_ptr, g_ptr, 0, K, rstd, 1, BLOCK_K // 8, 8)
            xs, xsum = int4_x(xs, NG, WG)
        elif WFMT == 1:
            xs = x_words(x_ptr, g_ptr, 0, K, rstd, 1, BLOCK_K // 4, 4)
            xtot = 128.0 * tl.sum(x_sum4(xs), axis=0)
            xs = int8_x(xs)
        else:
            xf = x_tile(x_ptr, g_ptr, rk, rk < K, rstd, 1)
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
            if WFMT == 2:
                y1 = tl.sum(int4_groups(int4_dot(w1, xs), s1, o1, xsum, HALF, NG, WG), axis=1)
                y2 = tl.sum(int4_groups(int4_dot(w2, xs), s2, o2, xsum, HALF, NG, WG), axis=1)
            elif WFMT == 1:
                zero = tl.zeros((HALF, BLOCK_K // 4), dtype=tl.float32)
                y1 = int8_rows(int8_fma(zero, w1, xs), s1, xtot)
                y2 = int8_rows(int8_fma(zero, w2, xs), s2, xtot)
            else:
                y1 = tl.sum(w1.to(tl.float32) * xf[None, :], axis=1)
                y2 = tl.sum(w2.to(tl.float32) * xf[None, :], axis=1)
            _rope_store(y1.to(dt).to(tl.float32), y2.to(dt).to(tl.float32), u, d1, r1, r2, q_ptr, kc_ptr, vc_ptr,
                        cos_ptr, sin_ptr, pos_ptr, H, HKV, stride_ch, stride_cs, D)
            w1, w2, s1, o1, s2, o2 = w1_nx, w2_nx, s1_nx, o1_nx, s2_nx, o2_nx
            u, d1, r1, r2 = u_nx, d1_nx, r1_nx, r2_nx
    else:
        if WFMT == 2:  # as gemv.py's int4 path: per-group sums, scaled and offset
            NG: tl.constexpr = BLOCK_K // GROUP
            WG: tl.constexpr = GROUP // 8
            xs = x_words(x_ptr, g_ptr, 0, K, rstd, 1, BLOCK_K // 8, 8)
            xs, xsum = int4_x(xs, NG, WG)
            acc1 = int4_groups(int4_dot(w1, xs), s1, o1, xsum, HALF, NG, WG)
            acc2 = int4_groups(int4_dot(w2, xs), s2, o2, xsum, HALF, NG, WG)
            for k0 in range(BLOCK_K, K, BLOCK_K):
                w1, w2, s1, o1, s2, o2 = int4_tile_loads(w_ptr, s_ptr, o_ptr, r1, r1 < N, k0, K, KW, D // 2,
                                                         stride_wn, stride_sn, True, BLOCK_K, GROUP)
                xs = x_words(x_ptr, g_ptr, k0, K, rstd, 1, BLOCK_K // 8, 8)
                xs, xsum = int4_x(xs, NG, WG)
                acc1 += int4_groups(int4_dot(w1, xs), s1, o1, xsum, HALF, NG, WG)
                acc2 += int4_groups(int4_dot(w2, xs), s2, o2, xsum, HALF, NG, WG)
        elif WFMT == 1:  # as gemv.py's int8 path
            xs = x_words(x_ptr, g_ptr, 0, K, rstd, 1, BLOCK_K // 4, 4)
            xacc = x_sum4(xs)
            xs = int8_x(xs)
            acc1 = int8_fma(tl.zeros((HALF, BLOCK_K // 4), dtype=tl.float32), w1, xs)
            acc2 = int8_fma(tl.zeros((HALF, BLOCK_K // 4), dtype=tl.float32), w2, xs)
            for k0 in range(BLOCK_K, K, BLOCK_K):
                w1, w2 = words(w_ptr, r1, r1 < N, k0 // 4, KW, D // 2, stride_wn, True, BLOCK_K // 4)
                xs = x_words(x_ptr, g_ptr, k0, K, rstd, 1, BLOCK_K // 4, 4)
                xacc += x_sum4(xs)
                xs = int8_x(xs)
                acc1 = int8_fma(acc1, w1, xs)
                acc2 = int8_fma(acc2, w2, xs)
        else:
            xf = x_tile(x_ptr, g_ptr, rk, rk < K, rstd, 1)  # as transformers' LlamaRMSNorm
            acc1 = w1.to(tl.float32) * xf[None, :]  # (HALF, BLOCK_K) fp32
            acc2 = w2.to(tl.float32) * xf[None, :]
            for k0 in range(BLOCK_K, K, BLOCK_K):
                k = k0 + rk
                w1, w2 = w_tiles(w_ptr, r1, r1 < N, k, K, D // 2, stride_wn, True)
                xf = x_tile(x_ptr, g_ptr, k, k < K, rstd, 1)
                acc1 += w1.to(tl.float32) * xf[None, :]
                acc2 += w2.to(tl.float32) * xf[None, :]
        if USE_PDL == 2:
            gdc_launch_dependents()
        if WFMT == 1:  # int8: the rows' constant part and scale
            xtot = 128.0 * tl.sum(xacc, axis=0)
            y1 = int8_rows(acc1, s1, xtot).to(dt).to(tl.float32)
            y2 = int8_rows(acc2, s2, xtot).to(dt).to(tl.float32)
        else:  # the projection, rounded as transformers' q/k/v
            y1 = tl.sum(acc1, axis=1).to(dt).to(tl.float32)
            y2 = tl.sum(acc2, axis=1).to(dt).to(tl.float32)
        _rope_store(y1, y2, u, d1, r1, r2, q_ptr, kc_ptr, vc_ptr, cos_ptr, sin_ptr, pos_ptr, H, HKV, stride_ch,
                    stride_cs, D)


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
    result), as gemv.fused_call. Also what scripts/sass_probe.py compiles offline."""
    D = cos.numel()
    hkv = k_cache.shape[1]
    q = torch.empty((1, n_heads * D), device=x.device, dtype=x.dtype)
    wfmt, group, wk, kw = weight_format(x, wqkv, scales, offsets, group, wqkv.shape[0])
    s = scales if scales is not None else q  # unused pointer arguments get q (never read)
    o = offsets if offsets is not None else s

    def grid(meta):
        return persistent_grid((n_heads + 2 * hkv) * (D // meta["BLOCK_N"]), meta, x.device)

    form = "qkv_rope" + ("", "_int8", "_int4")[wfmt]
    config = pinned_config(form, wqkv.shape[0], x.shape[1], heads_form(form, n_heads, hkv))
    kernel, config = (_gemv_qkv_rope_kernel.fn, config) if config is not None else (_gemv_qkv_rope_kernel, {})
    config = one_tile_config(config, x.shape[1])
    args = (x, wk, q, k_cache, v_cache, g, ss, cos, sin, input_pos, s, o, wqkv.shape[0], x.shape[1], kw, ss.numel(),
            wk.stride(0), s.stride(0) if wfmt == WFMT_INT4 else 0, eps, n_heads, hkv,
            k_cache.stride(1), k_cache.stride(2))
    kwargs = dict(D=D, NSS_BLOCK=triton.next_power_of_2(ss.numel()), USE_PDL=pdl, WFMT=wfmt, GROUP=group,
                  **config, **launch_kwargs(pdl))
    return kernel, grid, args, kwargs, q
