"""The fused batch-1 decode GEMV: y (1, N) = x (1, K) @ W (N, K)^T, streaming W once with an fp32 accumulator.

One kernel with an optional fused prologue / epilogue (constexpr switches: the plain GEMV compiles to the bare
loop). The batch-1 decode block is four of them around attention:
  wqkv: RMSNorm prologue          wo: residual epilogue + sum-of-squares partials of its output
  w13:  RMSNorm prologue + SwiGLU epilogue (gate row n and up row n in one program)
  w2:   residual epilogue + sum-of-squares partials
(wqkv with RoPE and the K/V cache write in its epilogue: qkv_rope.py. Under tensor parallelism with the fused
all-reduce, wo and w2 store their rows into the all-reduce's slots and sum them there instead:
gemv_residual_allreduce.) The RMSNorm statistics come from the partials the previous kernel wrote (one fp32 per
SS_GROUP output rows), so no program re-reads a whole row to normalize it, and outside that all-reduce nothing
needs zeroing or atomics. Each step rounds where transformers'
fp16 code rounds (normed x, gate, up, silu, the product, the projection before the residual add), so only the
GEMV's summation order differs from the unfused path.

The weights are in the model dtype or quantized (constexpr WFMT: int8 per row, int4 in groups), the latter read
as packed words and dequantized in registers in fp32 (dequant.py), with the same prologue and epilogues.

A launch is one program per BLOCK_N rows, or, with a config's PERSIST (programs per SM), persistent programs
that walk the row blocks with x prepared once and the next block's tile loaded before this block's products (the
row in one K tile): a program per block loads its tile and then only computes, in step with the others of its
SM, so memory and arithmetic take turns (docs/PERF.md, "Persistent programs").
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .configs import autotune_configs, rows_config
from .dequant import (WFMT_INT4, add_rows, int4_dot, int4_groups, int4_tile_loads, int4_x,
                      int8_fma, int8_rows, int8_x, split_words, weight_format, words, x_sum4)
from .gemm import sm_count
from .lamport import push_slots, store_row_ss, wait_sum
from .pdl import PDL_OFF, gdc_launch_dependents, gdc_wait, interpreting, launch_kwargs, use_pdl

# model.linear's GEMV takes one row: a multi-row variant (each W tile used for up to 8 rows) measured 336 tok/s at
# batch 4 against 725 for cuBLAS on an H200 (docs/PERF.md). The fused forms take up to FUSED_ROWS_MAX rows of a
# decode step with quantized weights (kernels/gemv_rows.py).
GEMV_MAX_ROWS = 1
FUSED_ROWS_MAX = 4

PROLOGUE_NONE, PROLOGUE_RMSNORM = 0, 1
EPILOGUE_NONE, EPILOGUE_RESIDUAL_SS, EPILOGUE_SWIGLU, EPILOGUE_RESIDUAL_ALLREDUCE = 0, 1, 2, 3
SS_GROUP = 8  # output rows per sum-of-squares partial (every BLOCK_N is a multiple)
# EPILOGUE_RESIDUAL_ALLREDUCE: the last programs to finish that sum the row, a block of 1024 values each, side by
# side (one program summing Llama-7B's 4096 values alone cost the step a sixth)
GEMV_REDUCERS = 4


@triton.jit
def x_tile(x_ptr, g_ptr, k, k_mask, rstd, PROLOGUE: tl.constexpr):
    """The K tile k of the GEMV input in fp32, with the RMSNorm prologue applied."""
    dt = x_ptr.dtype.element_ty
    xv = tl.load(x_ptr + k, mask=k_mask, other=0.0)
    if PROLOGUE == 1:  # g * (x * rstd).to(dt), as transformers' LlamaRMSNorm
        g = tl.load(g_ptr + k, mask=k_mask, other=0.0)
        xv = g * (xv.to(tl.float32) * rstd).to(dt)
    return xv.to(tl.float32)


@triton.jit
def w_tiles(w_ptr, rn, n_mask, k, K, offset, stride_wn, TWO: tl.constexpr):
    """The weight tile at rows rn, columns k (streamed once: evict first) and, with TWO, the tile of the rows
    `offset` further down (SwiGLU's up rows; RoPE's second half of a head), else the same tile again."""
    w_off = rn[:, None] * stride_wn + k[None, :]
    wm = n_mask[:, None] & (k < K)[None, :]
    w = tl.load(w_ptr + w_off, mask=wm, other=0.0, eviction_policy="evict_first")
    w2 = w
    if TWO:
        w2 = tl.load(w_ptr + offset * stride_wn + w_off, mask=wm, other=0.0, eviction_policy="evict_first")
    return w, w2


@triton.jit
def x_words(x_ptr, g_ptr, k0, K, rstd, PROLOGUE: tl.constexpr, NW: tl.constexpr, PER: tl.constexpr):
    """The K tile k0..k0 + NW * PER of the GEMV input (x_tile) as PER (NW,) tensors: element j of each quantized
    weight word (dequant.split_words)."""
    k = k0 + tl.arange(0, NW)[:, None] * PER + tl.arange(0, PER)[None, :]
    return split_words(x_tile(x_ptr, g_ptr, k, k < K, rstd, PROLOGUE), NW, PER)


@triton.jit
def _int8_scales(s_ptr, rn, n_mask, N, TWO: tl.constexpr):
    """int8: the fp32 scales of rows rn and, with TWO, of the up rows N further down (else the same again)."""
    scale = tl.load(s_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)
    scale_up = scale
    if TWO:
        scale_up = tl.load(s_ptr + N + rn, mask=n_mask, other=0.0).to(tl.float32)
    return scale, scale_up


@triton.jit
def first_tiles(w_ptr, s_ptr, o_ptr, rn, n_mask, K, KW, offset, stride_wn, stride_sn, TWO: tl.constexpr,
                WFMT: tl.constexpr, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """The first K tile of rows rn and, with TWO, of the rows `offset` further down (else the same again) in the
    weight format WFMT, with their scales and offsets: (w, w2, s, o, s2, o2), 0.0 where the format has none
    (int8: s and s2 the rows' scales, no offsets)."""
    if WFMT == 2:  # int4: words of 8 weights, a scale and an offset per group (dequant.py)
        w, w2, s, o, s2, o2 = int4_tile_loads(w_ptr, s_ptr, o_ptr, rn, n_mask, 0, K, KW, offset, stride_wn,
                                              stride_sn, TWO, BLOCK_K, GROUP)
    elif WFMT == 1:  # int8: words of 4 weights, a scale per row
        w, w2 = words(w_ptr, rn, n_mask, 0, KW, offset, stride_wn, TWO, BLOCK_K // 4)
        s, s2 = _int8_scales(s_ptr, rn, n_mask, offset, TWO)
        o, o2 = 0.0, 0.0
    else:
        w, w2 = w_tiles(w_ptr, rn, n_mask, tl.arange(0, BLOCK_K), K, offset, stride_wn, TWO)
        s, o, s2, o2 = 0.0, 0.0, 0.0, 0.0
    return w, w2, s, o, s2, o2


def persistent_grid(blocks: int, meta: dict, device: torch.device) -> tuple[int]:
    """The grid of a launch of `blocks` row blocks: one program a block, or with the config's PERSIST that many
    persistent programs per SM, at most one a block."""
    if meta.get("PERSIST", 0):
        return (min(blocks, meta["PERSIST"] * sm_count(device)),)
    return (blocks,)


def one_tile_config(config: dict, K: int, persistent_ok: bool = True) -> dict:
    """config without PERSIST where the persistent form cannot run (it holds one K tile of x: K wider than
    BLOCK_K; persistent_ok False: the tensor-parallel all-reducing epilogue, which counts one arrival a
    program): the same tile, one program a row block."""
    if config.get("PERSIST", 0) and (K > config["BLOCK_K"] or not persistent_ok):
        return {k: v for k, v in config.items() if k != "PERSIST"}
    return config


@triton.jit
def _plus_residual(y, res_ptr, rn, n_mask):
    """res + y, rounded to the model dtype as transformers' residual add rounds."""
    dt = y.dtype
    r = tl.load(res_ptr + rn, mask=n_mask, other=0.0)
    return (r.to(tl.float32) + y.to(tl.float32)).to(dt)


@triton.jit
def _store_rows(y, up, rn, n_mask, blk, y_ptr, res_ptr, ss_out_ptr, N, EPILOGUE: tl.constexpr,
                BLOCK_N: tl.constexpr):
    """Epilogues 0-2 of row block blk (rows rn) and the store: y the GEMV's rows in the model dtype, up the
    SwiGLU up rows (else y again)."""
    if EPILOGUE == 1:  # + residual, then this output's sum-of-squares partials for the next RMSNorm
        y = _plus_residual(y, res_ptr, rn, n_mask)
        yf = y.to(tl.float32)
        part = tl.sum(tl.reshape(yf * yf, (BLOCK_N // 8, 8)), axis=1)  # 8 == SS_GROUP
        rg = blk * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
        tl.store(ss_out_ptr + rg, part, mask=rg < tl.cdiv(N, 8))
    if EPILOGUE == 2:  # silu(gate) * up, each rounded as transformers' fp16 MLP rounds
        gate = y.to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(y.dtype)
        y = act * up
    tl.store(y_ptr + rn, y, mask=n_mask)


@triton.jit
def row_rstds(ss_ptr, stride_ssm, NSS, K, eps, PROLOGUE: tl.constexpr, NSS_BLOCK: tl.constexpr, ROWS: tl.constexpr):
    """Each row's RMSNorm 1 / RMS (fp32) from its NSS sum-of-squares partials (fp32, from L2; one load a row), a
    tuple of ROWS; 0.0 without the prologue."""
    out = ()
    for r in tl.static_range(ROWS):
        rstd = 0.0
        if PROLOGUE == 1:
            rp = tl.arange(0, NSS_BLOCK)
            ss = tl.load(ss_ptr + r * stride_ssm + rp, mask=rp < NSS, other=0.0)
            # float scalars may arrive as fp64 (inductor types a float argument by its value): keep fp32
            rstd = (1.0 / tl.sqrt(tl.sum(ss, axis=0) / K + eps)).to(tl.float32)
        out = out + (rstd,)
    return out


@triton.jit
def x_rows(x_ptr, stride_xm, g_ptr, k0, K, rstds, PROLOGUE: tl.constexpr, WFMT: tl.constexpr, GROUP: tl.constexpr,
           BLOCK_K: tl.constexpr, ROWS: tl.constexpr):
    """Each row's K tile k0.. of the input (RMSNorm prologue applied), made ready for the format's products:
    (xs, sums) tuples of ROWS: int4, int4_x's scaled words and each group's sum of x; int8, int8_x's scaled words and
    x_sum4's sums; the model dtype, the fp32 tile (x_tile) and 0.0."""
    xs = ()
    sums = ()
    for r in tl.static_range(ROWS):
        if WFMT == 2:
            a, b = int4_x(x_words(x_ptr + r * stride_xm, g_ptr, k0, K, rstds[r], PROLOGUE, BLOCK_K // 8, 8),
                          BLOCK_K // GROUP, GROUP // 8)
        elif WFMT == 1:
            a = x_words(x_ptr + r * stride_xm, g_ptr, k0, K, rstds[r], PROLOGUE, BLOCK_K // 4, 4)
            b = x_sum4(a)
            a = int8_x(a)
        else:
            k = k0 + tl.arange(0, BLOCK_K)
            a = x_tile(x_ptr + r * stride_xm, g_ptr, k, k < K, rstds[r], PROLOGUE)
            b = 0.0
        xs = xs + (a,)
        sums = sums + (b,)
    return xs, sums


@triton.jit
def products(accs, w, s, o, xs, sums, FIRST: tl.constexpr, WFMT: tl.constexpr, GROUP: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ROWS: tl.constexpr):
    """accs[r] + this K tile's products with row r's x (x_rows), each weight's float made once for every row; FIRST:
    the products alone (accs unused). Per row: int4 (BLOCK_N, groups per tile), the groups' scaled and offset sums;
    int8 (BLOCK_N, BLOCK_K // 4), int8_fma's sums; the model dtype (BLOCK_N, BLOCK_K) fp32."""
    if WFMT == 2:
        out = int4_groups(int4_dot(w, xs, ROWS), s, o, sums, BLOCK_N, BLOCK_K // GROUP, GROUP // 8, ROWS)
        if FIRST == 0:
            out = add_rows(accs, out, ROWS)
    elif WFMT == 1:
        if FIRST == 1:
            accs = ()
            for r in tl.static_range(ROWS):
                accs = accs + (tl.zeros((BLOCK_N, BLOCK_K // 4), dtype=tl.float32),)
        out = int8_fma(accs, w, xs, ROWS)
    else:
        wf = w.to(tl.float32)
        out = ()
        for r in tl.static_range(ROWS):
            out = out + (wf * xs[r][None, :],)
        if FIRST == 0:
            out = add_rows(accs, out, ROWS)
    return out


@triton.jit
def x_totals(sums, WFMT: tl.constexpr, ROWS: tl.constexpr):
    """What row_sums takes of x_rows' sums: int8, 128 sum_k x_k of each row from its x_sum4 sums (int8_rows'
    constant part); other formats, the sums unchanged (row_sums does not read them)."""
    out = sums  # (WFMT is a constexpr: an early return would still compile what follows it)
    if WFMT == 1:
        out = ()
        for r in tl.static_range(ROWS):
            out = out + (128.0 * tl.sum(sums[r], axis=0),)
    return out


@triton.jit
def row_sums(accs, s, xtots, WFMT: tl.constexpr, ROWS: tl.constexpr):
    """Each row's outputs (BLOCK_N,) fp32 from its products: int8, its rows' constant part and scale (int8_rows,
    xtots from x_totals); else the sums of the tile's columns (int4: of the groups' scaled and offset sums)."""
    out = ()
    for r in tl.static_range(ROWS):
        if WFMT == 1:
            out = out + (int8_rows(accs[r], s, xtots[r]),)
        else:
            out = out + (tl.sum(accs[r], axis=1),)
    return out


@triton.autotune(configs=autotune_configs(), key=["N", "K", "PROLOGUE", "EPILOGUE", "WFMT", "GROUP", "ROWS"])
@triton.jit
def _gemv_fused_kernel(x_ptr, w_ptr, y_ptr, g_ptr, res_ptr, ss_in_ptr, ss_out_ptr, s_ptr, o_ptr, N, K, KW, NSS,
                       stride_wn, stride_sn, eps, buffer_ptrs, SLOT, cnt_ptr, stride_xm, stride_ym, stride_rm,
                       stride_ssm, stride_sso,
                       PROLOGUE: tl.constexpr, EPILOGUE: tl.constexpr, NSS_BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
                       WFMT: tl.constexpr, GROUP: tl.constexpr, RANK: tl.constexpr, WORLD: tl.constexpr,
                       REDUCERS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       PERSIST: tl.constexpr = 0, ROWS: tl.constexpr = 1):
    REDUCE_BLOCK: tl.constexpr = 1024  # values of the row an all-reducing program sums at a time
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    n_mask = rn < N
    dt = x_ptr.dtype.element_ty
    TWO: tl.constexpr = EPILOGUE == 2
    # the first K tile of the weights (and of the up rows) and their scales: nothing writes them, so they load
    # before the wait for the previous kernel
    w, w_up, s, o, s_up, o_up = first_tiles(w_ptr, s_ptr, o_ptr, rn, n_mask, K, KW, N, stride_wn, stride_sn, TWO,
                                            WFMT, GROUP, BLOCK_K)
    if USE_PDL != 0:
        gdc_wait()  # x, the partials and the residual come from earlier kernels
    if USE_PDL == 1:
        gdc_launch_dependents()
    # RMSNorm statistics from the sum-of-squares partials of x: the scale is needed before the first product
    rstds = row_rstds(ss_in_ptr, stride_ssm, NSS, K, eps, PROLOGUE, NSS_BLOCK, ROWS)
    if PERSIST != 0:
        # Persistent: one K tile per row (the launcher checks K <= BLOCK_K), x prepared once, and programs that
        # walk the row blocks pid, pid + programs, ..., loading the next block's tile before this block's products
        # so that the loads of a program overlap its own arithmetic (one program per block loads, then only
        # computes: its SM's loads and arithmetic take turns)
        xs, sums = x_rows(x_ptr, stride_xm, g_ptr, 0, K, rstds, PROLOGUE, WFMT, GROUP, BLOCK_K, ROWS)
        xtots = x_totals(sums, WFMT, ROWS)
        nprog = tl.num_programs(0)
        nblk = tl.cdiv(N, BLOCK_N)
        for blk in range(pid, nblk, nprog):
            rn_next = (blk + nprog) * BLOCK_N + tl.arange(0, BLOCK_N)
            m_next = rn_next < N  # all false past the last block: no memory traffic
            if USE_PDL == 2:
                if blk + nprog >= nblk:  # this program's last block: as the one-block programs trigger
                    gdc_launch_dependents()
            w_nx, w_up_nx, s_nx, o_nx, s_up_nx, o_up_nx = first_tiles(w_ptr, s_ptr, o_ptr, rn_next, m_next, K, KW, N,
                                                                      stride_wn, stride_sn, TWO, WFMT, GROUP, BLOCK_K)
            ys = row_sums(products((), w, s, o, xs, sums, 1, WFMT, GROUP, BLOCK_N, BLOCK_K, ROWS), s, xtots, WFMT,
                          ROWS)
            ups = ys
            if TWO:
                ups = row_sums(products((), w_up, s_up, o_up, xs, sums, 1, WFMT, GROUP, BLOCK_N, BLOCK_K, ROWS), s_up,
                               xtots, WFMT, ROWS)
            for r in tl.static_range(ROWS):
                _store_rows(ys[r].to(dt), ups[r].to(dt), rn, n_mask, blk, y_ptr + r * stride_ym,
                            res_ptr + r * stride_rm, ss_out_ptr + r * stride_sso, N, EPILOGUE, BLOCK_N)
            w, w_up, s, o, s_up, o_up = w_nx, w_up_nx, s_nx, o_nx, s_up_nx, o_up_nx
            rn, n_mask = rn_next, m_next
    else:
        # int4: each tile reduced to per-group sums, scaled and offset, (BLOCK_N, groups per tile) a row; int8:
        # sums of f * x per row and position, and of x (the constant part at the end)
        xs, sums = x_rows(x_ptr, stride_xm, g_ptr, 0, K, rstds, PROLOGUE, WFMT, GROUP, BLOCK_K, ROWS)
        xacc = sums
        accs = products((), w, s, o, xs, sums, 1, WFMT, GROUP, BLOCK_N, BLOCK_K, ROWS)
        accs_up = accs
        if TWO:
            accs_up = products((), w_up, s_up, o_up, xs, sums, 1, WFMT, GROUP, BLOCK_N, BLOCK_K, ROWS)
        for k0 in range(BLOCK_K, K, BLOCK_K):
            if WFMT == 2:
                w, w_up, s, o, s_up, o_up = int4_tile_loads(w_ptr, s_ptr, o_ptr, rn, n_mask, k0, K, KW, N, stride_wn,
                                                            stride_sn, TWO, BLOCK_K, GROUP)
            elif WFMT == 1:
                w, w_up = words(w_ptr, rn, n_mask, k0 // 4, KW, N, stride_wn, TWO, BLOCK_K // 4)
            else:
                w, w_up = w_tiles(w_ptr, rn, n_mask, k0 + rk, K, N, stride_wn, TWO)
            xs, sums = x_rows(x_ptr, stride_xm, g_ptr, k0, K, rstds, PROLOGUE, WFMT, GROUP, BLOCK_K, ROWS)
            if WFMT == 1:
                xacc = add_rows(xacc, sums, ROWS)
            accs = products(accs, w, s, o, xs, sums, 0, WFMT, GROUP, BLOCK_N, BLOCK_K, ROWS)
            if TWO:
                accs_up = products(accs_up, w_up, s_up, o_up, xs, sums, 0, WFMT, GROUP, BLOCK_N, BLOCK_K, ROWS)
        if USE_PDL == 2:
            gdc_launch_dependents()
        xtots = x_totals(xacc, WFMT, ROWS)
        ys = row_sums(accs, s, xtots, WFMT, ROWS)
        ups = ys
        if TWO:
            ups = row_sums(accs_up, s_up, xtots, WFMT, ROWS)
        if EPILOGUE == 3:  # tensor parallel (one row): + residual, then this rank's rows straight into its slot of
            # every rank's all-reduce buffer, then the all-reduce: the last REDUCERS programs to count their push in
            # sum the row's blocks
            y = _plus_residual(ys[0].to(dt), res_ptr, rn, n_mask)
            push_slots(buffer_ptrs, y, rn, n_mask, SLOT, RANK, WORLD)
            tl.debug_barrier()  # (the peers' rows land whenever they land: the values are their own flags, lamport.py)
            # relaxed: the count only elects the programs that sum, and what they read is its own flag, so the
            # pushes need no release before it (a fence that waits for every store of the program, the peers'
            # included)
            arrived = tl.atomic_add(cnt_ptr, 1, sem="relaxed")
            nprog = tl.num_programs(0)
            if arrived == nprog - 1:  # every program has counted: zero again for the next call (and graph replay)
                tl.atomic_xchg(cnt_ptr, 0, sem="relaxed")
            reducers = tl.minimum(nprog, REDUCERS)
            me = arrived - (nprog - reducers)  # 0 .. reducers - 1 for the last ones to arrive
            if me >= 0:  # blocks me, me + reducers, ... of REDUCE_BLOCK values, each waited for on its own
                for c0 in range(me * REDUCE_BLOCK, N, reducers * REDUCE_BLOCK):
                    offs = c0 + tl.arange(0, REDUCE_BLOCK)
                    h = wait_sum(buffer_ptrs, y_ptr, offs, offs < N, SLOT, RANK, WORLD, REDUCE_BLOCK)
                    store_row_ss(y_ptr, ss_out_ptr, h, c0 // REDUCE_BLOCK, offs, N, REDUCE_BLOCK, 8)  # 8 == SS_GROUP
        else:
            for r in tl.static_range(ROWS):
                _store_rows(ys[r].to(dt), ups[r].to(dt), rn, n_mask, pid, y_ptr + r * stride_ym,
                            res_ptr + r * stride_rm, ss_out_ptr + r * stride_sso, N, EPILOGUE, BLOCK_N)


def allreduce_reducers() -> int:
    """GEMV_REDUCERS; 1 under Triton's CPU interpreter, which runs the programs one after another, so that only
    the last one can wait for the others' rows."""
    return 1 if interpreting() else GEMV_REDUCERS


def _launch_fused(x, w, g, res, ss_in, eps: float, prologue: int, epilogue: int, n: int, pdl: int = PDL_OFF,
                  scales=None, offsets=None, group: int = 0, push: tuple | None = None):
    """(y (1, n), sum-of-squares partials (cdiv(n, SS_GROUP),) fp32 when the epilogue makes them, else y). With
    scales, w is a quantized weight (dequant.weight_format). push: EPILOGUE_RESIDUAL_ALLREDUCE's (buffer_ptrs,
    rank, world, slot, counter)."""
    kernel, grid, args, kwargs, out = fused_call(x, w, g, res, ss_in, eps, prologue, epilogue, n, use_pdl(x, pdl),
                                                 scales, offsets, group, push)
    wrap_triton(kernel)[grid](*args, **kwargs)
    return out


def fused_call(x, w, g, res, ss_in, eps: float, prologue: int, epilogue: int, n: int, pdl: int, scales, offsets,
               group: int, push: tuple | None = None) -> tuple:
    """(kernel, grid, arguments, keywords, outputs) of _launch_fused's launch, pdl already decided (a use_pdl
    result): the pinned config's kernel, else the autotuned one (the grid then a function of its config). Also
    what scripts/sass_probe.py compiles offline. x (M, K): M rows (1, or 2..FUSED_ROWS_MAX with quantized weights:
    kernels/gemv_rows.py), res (M, n), ss_in (NSS,) at one row, else (M, NSS); the partials out (cdiv(n, SS_GROUP),)
    at one row, else (M, cdiv(n, SS_GROUP))."""
    M, K = x.shape
    if M > 1 and (push is not None or M > FUSED_ROWS_MAX):
        raise ValueError(f"the fused GEMV takes 1..{FUSED_ROWS_MAX} rows (one with the all-reduce), got {M}")
    wfmt, group, wk, kw = weight_format(x, w, scales, offsets, group, 2 * n if epilogue == EPILOGUE_SWIGLU else n)
    y = torch.empty((M, n), device=x.device, dtype=x.dtype)
    # the partials buffer exists only when the epilogue writes it; otherwise y stands in (never written)
    ss_shape = (triton.cdiv(n, SS_GROUP),) if M == 1 else (M, triton.cdiv(n, SS_GROUP))
    ss_out = (torch.empty(ss_shape, device=x.device, dtype=torch.float32)
              if epilogue in (EPILOGUE_RESIDUAL_SS, EPILOGUE_RESIDUAL_ALLREDUCE) else y)
    # unused pointer arguments get y (never read)
    s = scales if scales is not None else y
    o = offsets if offsets is not None else s

    def grid(meta):
        return persistent_grid(triton.cdiv(n, meta["BLOCK_N"]), meta, x.device)

    form = {EPILOGUE_SWIGLU: "swiglu", EPILOGUE_RESIDUAL_SS: "residual", EPILOGUE_RESIDUAL_ALLREDUCE: "residual"}.get(
        epilogue, "rmsnorm" if prologue else "gemv")
    buffer_ptrs, rank, world, slot, counter = push if push is not None else (0, 0, 1, 0, y)
    config = rows_config(form + ("", "_int8", "_int4")[wfmt], n, K, M)
    kernel, config = (_gemv_fused_kernel.fn, config) if config is not None else (_gemv_fused_kernel, {})
    config = one_tile_config(config, K, epilogue != EPILOGUE_RESIDUAL_ALLREDUCE)
    row_stride = (lambda t: t.stride(0) if t.dim() == 2 and M > 1 else 0)  # 0 at one row: the rows loop is one pass
    args = (x, wk, y, g, res, ss_in, ss_out, s, o, n, K, kw, ss_in.shape[-1], wk.stride(0),
            s.stride(0) if wfmt == WFMT_INT4 else 0, eps, buffer_ptrs, slot, counter, row_stride(x), row_stride(y),
            row_stride(res), row_stride(ss_in), row_stride(ss_out))
    kwargs = dict(PROLOGUE=prologue, EPILOGUE=epilogue,
                  NSS_BLOCK=triton.next_power_of_2(ss_in.shape[-1]) if prologue else 1, USE_PDL=pdl, WFMT=wfmt,
                  GROUP=group, RANK=rank, WORLD=world,
                  REDUCERS=allreduce_reducers() if epilogue == EPILOGUE_RESIDUAL_ALLREDUCE else 1, ROWS=M, **config,
                  **launch_kwargs(pdl))
    return kernel, grid, args, kwargs, (y, ss_out)


def ss_partials(x: torch.Tensor) -> torch.Tensor:
    """Sum-of-squares partials of a (1, K) row in the kernels' format (torch; for the first block's input)."""
    return x.float().pow(2).view(-1, SS_GROUP).sum(-1)


@triton.jit
def _ss_partials_kernel(x_ptr, y_ptr, ss_ptr, NG, BLOCK: tl.constexpr, NARROW: tl.constexpr):
    rg = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # BLOCK groups of 8 == SS_GROUP values
    m = rg < NG
    offs = rg[:, None] * 8 + tl.arange(0, 8)[None, :]
    x = tl.load(x_ptr + offs, mask=m[:, None], other=0.0)
    if NARROW:  # x rounded to y's dtype first: the partials are those of the row the next kernel reads
        x = x.to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + offs, x, mask=m[:, None])
    x = x.to(tl.float32)
    tl.store(ss_ptr + rg, tl.sum(x * x, axis=1), mask=m)


@triton_op("llama_fast::row_ss_partials", mutates_args=())
def row_ss_partials(x: torch.Tensor) -> torch.Tensor:
    """ss_partials in one launch, for a row made outside the GEMVs (a tensor-parallel all-reduce's output):
    x (1, K) contiguous, K a multiple of SS_GROUP -> (K / SS_GROUP,) fp32."""
    ng = x.numel() // SS_GROUP
    ss = torch.empty((ng,), device=x.device, dtype=torch.float32)
    wrap_triton(_ss_partials_kernel)[(triton.cdiv(ng, 128),)](x, x, ss, ng, BLOCK=128, NARROW=False)
    return ss


def row_narrow_ss(x: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x rounded to like's dtype, its ss_partials) in one launch: x (1, K) contiguous fp32 (a one-shot
    all-reduce's output in its float32 buffer, parallel.SymmAllReduce), K a multiple of SS_GROUP. Plain Python
    (the batch-1 decode block that calls it runs uncompiled)."""
    ng = x.numel() // SS_GROUP
    y = torch.empty(x.shape, device=x.device, dtype=like.dtype)
    ss = torch.empty((ng,), device=x.device, dtype=torch.float32)
    _ss_partials_kernel[(triton.cdiv(ng, 128),)](x, y, ss, ng, BLOCK=128, NARROW=True)
    return y, ss


@triton_op("llama_fast::gemv", mutates_args=())
def gemv(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor | None = None, offsets: torch.Tensor | None = None,
         group: int = 0) -> torch.Tensor:
    """W @ x: x (1, K) contiguous, w (N, K) contiguous -> (1, N) in x.dtype.
    Quantized weights (llama_fast/quant.py): w the qweight, scales (N,) for int8; scales and offsets
    (N, K // group) for int4 (dequant.weight_format). The same three arguments in every op below."""
    return _launch_fused(x, w, x, x, x, 0.0, PROLOGUE_NONE, EPILOGUE_NONE, w.shape[0], PDL_OFF, scales, offsets,
                         group)[0]


@triton_op("llama_fast::gemv_rmsnorm", mutates_args=())
def gemv_rmsnorm(x: torch.Tensor, ss: torch.Tensor, g: torch.Tensor, w: torch.Tensor, eps: float,
                 pdl: int = PDL_OFF, scales: torch.Tensor | None = None, offsets: torch.Tensor | None = None,
                 group: int = 0) -> torch.Tensor:
    """W @ rmsnorm(x) * g: x (1, K), ss its sum-of-squares partials, g (K,), w (N, K) -> (1, N).
    pdl: a PDL_* mode, applied where it can be (pdl.use_pdl), as in every op below."""
    return _launch_fused(x, w, g, x, ss, eps, PROLOGUE_RMSNORM, EPILOGUE_NONE, w.shape[0], pdl, scales, offsets,
                         group)[0]


@triton_op("llama_fast::gemv_residual_ss", mutates_args=())
def gemv_residual_ss(x: torch.Tensor, w: torch.Tensor, res: torch.Tensor, pdl: int = PDL_OFF,
                     scales: torch.Tensor | None = None, offsets: torch.Tensor | None = None,
                     group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(res + W @ x, its sum-of-squares partials): x (1, K), w (N, K), res (1, N) -> (1, N), (N / 8,)."""
    return _launch_fused(x, w, x, res, x, 0.0, PROLOGUE_NONE, EPILOGUE_RESIDUAL_SS, w.shape[0], pdl, scales,
                         offsets, group)


def gemv_residual_allreduce(x: torch.Tensor, w: torch.Tensor, res: torch.Tensor, buffer_ptrs, rank: int, world: int,
                            slot: int, counter: torch.Tensor, pdl: int = PDL_OFF, scales: torch.Tensor | None = None,
                            offsets: torch.Tensor | None = None, group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor parallel, batch 1, the residual GEMV and the all-reduce of its rows in one kernel: (the sum over the
    ranks of res + W @ x (1, N), its sum-of-squares partials). Each program stores its rows straight into this
    rank's slot of every rank's all-reduce buffer (kernels.lamport; buffer_ptrs, rank, world, slot as
    allreduce.allreduce_ss takes them) as soon as they are summed, so the trip to the peers overlaps the GEMV's
    last programs. The last GEMV_REDUCERS programs to finish (counted on counter, an int32 that is 0 before the
    call and left 0) each wait for every rank's values of their blocks of the row in this rank's buffer, sum
    them in rank order, write them and their partials and empty their slots, as allreduce.allreduce_ss does in a
    kernel of its own. counter: one per buffer. Plain Python, like allreduce_ss: it writes the peers' memory,
    which no traced graph should own."""
    n = w.shape[0]
    if slot < n:
        raise ValueError(f"gemv_residual_allreduce: a row of {n} values does not fit a buffer slot of {slot}")
    if world & (world - 1) or n % SS_GROUP:
        raise ValueError(f"gemv_residual_allreduce: a power-of-two number of ranks and a row of a multiple of "
                         f"{SS_GROUP} values, got {world} ranks, {n} values")
    return _launch_fused(x, w, x, res, x, 0.0, PROLOGUE_NONE, EPILOGUE_RESIDUAL_ALLREDUCE, n, pdl, scales, offsets,
                         group, (buffer_ptrs, rank, world, slot, counter))


@triton_op("llama_fast::gemv_rmsnorm_swiglu", mutates_args=())
def gemv_rmsnorm_swiglu(x: torch.Tensor, ss: torch.Tensor, g: torch.Tensor, w13: torch.Tensor,
                        eps: float, pdl: int = PDL_OFF, scales: torch.Tensor | None = None,
                        offsets: torch.Tensor | None = None, group: int = 0) -> torch.Tensor:
    """silu(gate) * up of h = rmsnorm(x) * g: w13 (2I, K) = [gate; up] -> (1, I)."""
    return _launch_fused(x, w13, g, x, ss, eps, PROLOGUE_RMSNORM, EPILOGUE_SWIGLU, w13.shape[0] // 2, pdl, scales,
                         offsets, group)[0]
