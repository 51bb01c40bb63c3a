"""Weight-only int8 / int4 tiles of the decode GEMVs (gemv.py, qkv_rope.py): the packed weights read as 32-bit
words and turned into products with x in registers, in fp32.

The formats (llama_fast/quant.py): int8 qweight (N, K) with one scale per row, w = q * s[n]; int4 qweight uint8
(N, K / 2), element 2j in the low nibble of byte j and 2j + 1 in the high one, with a scale and an offset per
group of GROUP elements along K, w = q * s[n, k // GROUP] + o[n, k // GROUP]. The kernels read qweight as int32
words (little-endian): element j of a word sits in bits 8j..8j+7 (int8, 4 per word) or 4j..4j+3 (int4, 8 per
word), and a thread's 16-byte load holds 16 or 32 weights of a row.

Why not q.to(float32) and q * s + o per element: that form compiled (sm_90, ptxas) to about 8.5 instructions per
int4 weight and 5.5 per int8 weight (I2F conversions, byte extractions, per-element scaling), and an H200 streams
about 37 int4 (18 int8) weights per SM clock, against 128 instructions issued per SM clock: the GEMV would be
bound by instruction issue near 40 % of the bandwidth. Here each weight is read as the float of its bits where
they lie in the word, with every other bit cleared: a field of bits below bit 23 (the mantissa) is the subnormal
float value * 2^-149 exactly, so q at bit b is the float q * 2^(b - 149). (A field that reaches bit 23, the
exponent's lowest bit, is still exact: from 2^-126 up the normal numbers continue the subnormals' spacing.) x is
scaled once per tile by the power of two that makes every product q x 2^-49, so one mask (LOP3) and one FFMA
make a product, exact before the FFMA's rounding, and the sums need no constant part taken out:
  int8: bytes 0 and 1 in place, 2 and 3 from the word shifted by 16; u = q + 128 (the sign bit flipped in the
        same LOP3):
        sum_k q_k x_k = 2^49 sum_k u_k x_k 2^-49 - 128 sum_k x_k                  (per row, then * s[n])
  int4: nibbles 0-5 in place, 6 and 7 shifted down (bits 24 on would fall in the exponent):
        sum_{k in g} w_k x_k = 2^49 s sum_k q_k x_k 2^-49 + o sum_k x_k            (per group g)
Compiled for sm_90 at the pinned configs (configs.QUANT_CONFIGS; scripts/sass_probe.py), the K loop takes
3.0-3.4 instructions per int4 weight (the plain GEMV 3.7) and 3.7-4.0 per int8 weight (4.4 with the RMSNorm
prologue, which normalizes x in the loop); at the same configs 9-15 % fewer than the earlier form that masked q
under the exponent of 1.0 or 16.0 (f = 1 + u / 256, f = c + q / 16) and took the constant parts out through sums
of x (docs/PERF.md). The products keep fp32's
precision, with nothing to cancel; x must stay below 2^28 in magnitude (the scaled x below fp32's largest float).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

QUANT_GROUPS = (32, 64, 128)  # the int4 groups the kernels are built and tested for
# the subnormal form's powers of two: x scaled by X_SCALE (over the bit position of its weight's field) makes each
# product q x 2^-49; SUM_SCALE takes a sum of them back to q x
X_SCALE = tl.constexpr(2.0 ** 100)
SUM_SCALE = tl.constexpr(2.0 ** 49)
# the weight format (the kernels' constexpr WFMT)
WFMT_DENSE, WFMT_INT8, WFMT_INT4 = 0, 1, 2


def weight_format(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor | None, offsets: torch.Tensor | None,
                  group: int, rows: int) -> tuple[int, int, torch.Tensor, int]:
    """(WFMT, GROUP, the weight as the kernel reads it, its K in words) of a GEMV of x (1, K) by w with `rows`
    rows: w itself for the model dtype (scales None), its int32 words for int8 (scales (rows,)) and for int4
    (offsets given, scales and offsets (rows, K // group)). Raises ValueError on a mismatch."""
    return check_format(x.shape[-1], w, scales, offsets, group, rows)


def check_format(K: int, w: torch.Tensor, scales: torch.Tensor | None, offsets: torch.Tensor | None, group: int,
                 rows: int) -> tuple[int, int, torch.Tensor, int]:
    """weight_format for a weight of K columns (no input at hand: dequantize_weight)."""
    if scales is None:
        if offsets is not None or group:
            raise ValueError("offsets and group need scales (a quantized weight)")
        return WFMT_DENSE, 0, w, K
    if offsets is None:  # int8, one scale per row
        if w.dtype != torch.int8 or w.shape != (rows, K) or group:
            raise ValueError(f"int8 weights: qweight int8 ({rows}, {K}), scales ({rows},), no group; got "
                             f"{w.dtype} {tuple(w.shape)}, group {group}")
        if scales.shape != (rows,) or K % 4:
            raise ValueError(f"int8 weights: scales ({rows},) and K a multiple of 4; got scales "
                             f"{tuple(scales.shape)}, K {K}")
        return WFMT_INT8, 0, w.view(torch.int32), K // 4
    if group not in QUANT_GROUPS or K % group:
        raise ValueError(f"int4 weights: group one of {QUANT_GROUPS} dividing K = {K}; got {group}")
    if w.dtype != torch.uint8 or w.shape != (rows, K // 2):
        raise ValueError(f"int4 weights: qweight uint8 ({rows}, {K // 2}); got {w.dtype} {tuple(w.shape)}")
    if scales.shape != (rows, K // group) or offsets.shape != scales.shape or offsets.stride() != scales.stride():
        raise ValueError(f"int4 weights: scales and offsets ({rows}, {K // group}) with the same strides; got "
                         f"{tuple(scales.shape)}, {tuple(offsets.shape)}")
    return WFMT_INT4, group, w.view(torch.int32), K // 8


@triton.jit
def words(w_ptr, rn, n_mask, kw0, KW, offset, stride_wn, TWO: tl.constexpr, NW: tl.constexpr):
    """The (BLOCK_N, NW) uint32 words of rows rn from word kw0 on (streamed once: evict first) and, with TWO, those
    of the rows `offset` further down (SwiGLU's up rows; RoPE's second half of a head), else the same again.
    KW (words per row) bounds the tile: a multiple of 16 where the launcher specializes it, so the loads keep
    16 bytes per thread."""
    rw = kw0 + tl.arange(0, NW)
    off = rn[:, None] * stride_wn + rw[None, :]
    m = n_mask[:, None] & (rw < KW)[None, :]
    w = tl.load(w_ptr + off, mask=m, other=0, eviction_policy="evict_first").to(tl.uint32, bitcast=True)
    w2 = w
    if TWO:
        w2 = tl.load(w_ptr + offset * stride_wn + off, mask=m, other=0,
                     eviction_policy="evict_first").to(tl.uint32, bitcast=True)
    return w, w2


@triton.jit
def group_tiles(s_ptr, o_ptr, rn, n_mask, g0, KG, offset, stride_sn, TWO: tl.constexpr, NG: tl.constexpr):
    """int4: the (BLOCK_N, NG) scales and offsets (fp32) of rows rn from group g0 on and, with TWO, those of the
    rows `offset` further down (else the same again). KG: groups per row."""
    rg = g0 + tl.arange(0, NG)
    off = rn[:, None] * stride_sn + rg[None, :]
    m = n_mask[:, None] & (rg < KG)[None, :]
    s = tl.load(s_ptr + off, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
    o = tl.load(o_ptr + off, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
    s2, o2 = s, o
    if TWO:
        s2 = tl.load(s_ptr + offset * stride_sn + off, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
        o2 = tl.load(o_ptr + offset * stride_sn + off, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
    return s, o, s2, o2


@triton.jit
def int4_tile_loads(w_ptr, s_ptr, o_ptr, rn, n_mask, k0, K, KW, offset, stride_wn, stride_sn, TWO: tl.constexpr,
                    BLOCK_K: tl.constexpr, GROUP: tl.constexpr):
    """int4: the words (words) and the scales and offsets (group_tiles) of the K tile from k0, of rows rn and, with
    TWO, of the rows `offset` further down: (w, w2, s, o, s2, o2)."""
    w, w2 = words(w_ptr, rn, n_mask, k0 // 8, KW, offset, stride_wn, TWO, BLOCK_K // 8)
    s, o, s2, o2 = group_tiles(s_ptr, o_ptr, rn, n_mask, k0 // GROUP, K // GROUP, offset, stride_sn, TWO,
                               BLOCK_K // GROUP)
    return w, w2, s, o, s2, o2


@triton.jit
def split_words(xt, NW: tl.constexpr, PER: tl.constexpr):
    """The (NW, PER) tile of x (PER elements per weight word) as a tuple of PER (NW,) tensors, element j of each
    word (splits in registers)."""
    if PER == 4:
        a, b = tl.split(tl.reshape(xt, (NW, 2, 2)))  # j even | j odd
        x0, x2 = tl.split(a)
        x1, x3 = tl.split(b)
        return x0, x1, x2, x3
    else:
        a, b = tl.split(tl.reshape(xt, (NW, 4, 2)))  # 0 2 4 6 | 1 3 5 7
        a0, a1 = tl.split(tl.reshape(a, (NW, 2, 2)))  # 0 4 | 2 6
        b0, b1 = tl.split(tl.reshape(b, (NW, 2, 2)))  # 1 5 | 3 7
        x0, x4 = tl.split(a0)
        x2, x6 = tl.split(a1)
        x1, x5 = tl.split(b0)
        x3, x7 = tl.split(b1)
        return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def subnormal(bits):
    """The float32 whose bits are `bits`: a uint32 with bits 24-31 clear is the float bits * 2^-149, exactly
    (subnormal below 2^23; with bit 23 set, a normal number of the same spacing)."""
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def int8_x(xs):
    """int8_fma's x: element j of each word scaled by 2^100 (bytes 0 and 2 of a word, at bits 0..7 of their
    subnormal) or 2^92 (bytes 1 and 3, at bits 8..15), so that every product is u x 2^-49 (exact: powers of two)."""
    return xs[0] * X_SCALE, xs[1] * (X_SCALE / 256), xs[2] * X_SCALE, xs[3] * (X_SCALE / 256)


@triton.jit
def fma_rows(accs, f, xr, j: tl.constexpr, ROWS: tl.constexpr):
    """accs[r] + f * (element j of row r's x words) for each of ROWS rows: f (BLOCK_N, NW) the weights' floats,
    made once for every row (the rows of a decode step share a weight tile)."""
    out = ()
    for r in tl.static_range(ROWS):
        out = out + (accs[r] + f * xr[r][j][None, :],)
    return out


@triton.jit
def int8_fma(accs, w, xr, ROWS: tl.constexpr):
    """accs[r] + sum_j u_j x_j 2^-49 over the 4 bytes of each word (BLOCK_N, NW) for each row r, xr[r] from int8_x:
    u = q + 128 (the byte with its sign bit flipped) taken as the subnormal float of its bits in place (bytes 0 and
    1 of the word, then of the word shifted by 16). sum_j q_j x_j = 2^49 acc - 128 sum_j x_j."""
    u = w ^ 0x80808080
    uh = u >> 16
    accs = fma_rows(accs, subnormal(u & 0xFF), xr, 0, ROWS)
    accs = fma_rows(accs, subnormal(u & 0xFF00), xr, 1, ROWS)
    accs = fma_rows(accs, subnormal(uh & 0xFF), xr, 2, ROWS)
    accs = fma_rows(accs, subnormal(uh & 0xFF00), xr, 3, ROWS)
    return accs


@triton.jit
def int8_rows(acc, s, xtot):
    """int8: the rows (BLOCK_N,) of W @ x from int8_fma's acc (BLOCK_N, NW), the rows' scales s and xtot = 128 sum_k
    x_k: s (2^49 sum acc - xtot)."""
    return s * (SUM_SCALE * tl.sum(acc, axis=1) - xtot)


@triton.jit
def int4_x(xs, NG: tl.constexpr, WG: tl.constexpr):
    """(int4_dot's x, sum_k x_k per group of WG words (NG,)): element j of each word scaled by 2^(100 - 4j) for
    j < 6 (nibble j at bits 4j.. of its float) and 2^100 for j = 6, 7 (read from the word shifted by 24 and 28),
    so that every product is q x 2^-49 (exact: powers of two)."""
    xsum = tl.sum(tl.reshape(((xs[0] + xs[1]) + (xs[2] + xs[3])) + ((xs[4] + xs[5]) + (xs[6] + xs[7])), (NG, WG)),
                  axis=1)
    X0 = X_SCALE
    return (xs[0] * X0, xs[1] * (X0 / 16), xs[2] * (X0 / 256), xs[3] * (X0 / 4096), xs[4] * (X0 / 65536),
            xs[5] * (X0 / 1048576), xs[6] * X0, xs[7] * X0), xsum


@triton.jit
def int4_dot(w, xr, ROWS: tl.constexpr):
    """For each row r: sum_j q_j x_j 2^-49 over the 8 nibbles of each word (BLOCK_N, NW), xr[r] from int4_x: nibbles
    0-5 taken as the float of their bits in place (q 2^(4j - 149): subnormal, or for nibble 5 with q >= 8 the normal
    number whose exponent's lowest bit is q's top bit, the same value), nibbles 6 and 7 from the word shifted by 24
    and 28 (bits 24 on would fall in the exponent)."""
    f = subnormal(w & 0xF)
    p = ()
    for r in tl.static_range(ROWS):
        p = p + (f * xr[r][0][None, :],)
    p = fma_rows(p, subnormal(w & 0xF0), xr, 1, ROWS)
    p = fma_rows(p, subnormal(w & 0xF00), xr, 2, ROWS)
    p = fma_rows(p, subnormal(w & 0xF000), xr, 3, ROWS)
    p = fma_rows(p, subnormal(w & 0xF0000), xr, 4, ROWS)
    p = fma_rows(p, subnormal(w & 0xF00000), xr, 5, ROWS)
    p = fma_rows(p, subnormal((w >> 24) & 0xF), xr, 6, ROWS)
    p = fma_rows(p, subnormal(w >> 28), xr, 7, ROWS)
    return p


@triton.jit
def x_sum4(xs):
    """sum_j x_j per word (NW,), for the int8 rows' constant part."""
    return (xs[0] + xs[1]) + (xs[2] + xs[3])


@triton.jit
def int4_groups(ps, s, o, xsums, BLOCK_N: tl.constexpr, NG: tl.constexpr, WG: tl.constexpr, ROWS: tl.constexpr):
    """For each row r, each group's share of W @ x (BLOCK_N, NG) from the words' sums ps[r] (int4_dot): 2^49 s
    sum_k q_k x_k 2^-49 + o sum x, the dequantized product q * s + o summed over the group."""
    out = ()
    for r in tl.static_range(ROWS):
        fsum = tl.sum(tl.reshape(ps[r], (BLOCK_N, NG, WG)), axis=2)
        out = out + ((s * SUM_SCALE) * fsum + o * xsums[r][None, :],)
    return out


@triton.jit
def add_rows(a, b, ROWS: tl.constexpr):
    """a[r] + b[r] for each row."""
    out = ()
    for r in tl.static_range(ROWS):
        out = out + (a[r] + b[r],)
    return out


# ------------------------------------------------------------------------------------------- whole-weight dequant
# The prefill multiplies by the dequantized weight (a GEMM over the prompt's rows: cuBLAS on the model dtype). Traced
# as torch ops (unpack, fp32 multiply-add, cast), Inductor built kernels that moved the weight at about 35 GB/s (the
# nibble interleave defeats its vectorization): a 1000-token int4 prefill spent 190 of its 210 ms dequantizing.
# This kernel reads each byte once and writes the weight once, in the same fp32 arithmetic as quant.py's. int4
# loads a tile's scales and offsets once a group: loaded once a byte they made it 2.3x slower (a Llama-7B
# layer's four weights 325 against 142 us on an H200, 1.5 against 3.5 TB/s; docs/PERF.md).
DEQUANT_BLOCK_N, DEQUANT_BLOCK_B, DEQUANT_WARPS = 16, 256, 4  # rows x packed bytes (int4) or weights (int8) a program


@triton.jit
def _dequant_kernel(q_ptr, s_ptr, o_ptr, out_ptr, N, KB, stride_sn, GROUP: tl.constexpr, INT4: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr):
    """out (N, K) = the weight of q (N, KB): int8 (KB = K) q * s[n]; int4 (KB = K / 2 bytes, two nibbles each)
    q * s[n, k // GROUP] + o[n, k // GROUP], in fp32, rounded once to out's dtype."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    m = (rn < N)[:, None] & (rb < KB)[None, :]
    q = tl.load(q_ptr + rn[:, None].to(tl.int64) * KB + rb[None, :], mask=m, other=0)
    if INT4:  # the tile's groups: scales and offsets loaded once a group, not once a byte
        NG: tl.constexpr = 2 * BLOCK_B // GROUP
        rg = tl.program_id(1) * NG + tl.arange(0, NG)
        mg = (rn < N)[:, None] & (rg < 2 * KB // GROUP)[None, :]
        so = rn[:, None].to(tl.int64) * stride_sn + rg[None, :]
        s = tl.load(s_ptr + so, mask=mg, other=0.0).to(tl.float32)[:, :, None]
        o = tl.load(o_ptr + so, mask=mg, other=0.0).to(tl.float32)[:, :, None]
        qg = tl.reshape(q, (BLOCK_N, NG, GROUP // 2))  # the bytes of each group
        lo = (qg & 15).to(tl.float32) * s + o
        hi = (qg >> 4).to(tl.float32) * s + o
        w = tl.reshape(tl.join(lo, hi), (BLOCK_N, 2 * BLOCK_B))  # element 2j low nibble, 2j + 1 high
        rk = 2 * tl.program_id(1) * BLOCK_B + tl.arange(0, 2 * BLOCK_B)
        mk = (rn < N)[:, None] & (rk < 2 * KB)[None, :]
        tl.store(out_ptr + rn[:, None].to(tl.int64) * (2 * KB) + rk[None, :], w.to(out_ptr.dtype.element_ty), mask=mk)
    else:
        s = tl.load(s_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        w = q.to(tl.float32) * s[:, None]
        tl.store(out_ptr + rn[:, None].to(tl.int64) * KB + rb[None, :], w.to(out_ptr.dtype.element_ty), mask=m)


@triton_op("llama_fast::dequantize_weight", mutates_args=())
def dequantize_weight(qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None,
                      group: int) -> torch.Tensor:
    """The (N, K) weight in scales' dtype of a quantized linear (llama_fast.quant's format): int8 qweight (N, K)
    with scales (N,) (offsets None, group 0), or int4 qweight uint8 (N, K / 2) with scales and offsets (N, K / G)."""
    n, kb = qweight.shape
    int4 = offsets is not None
    check_format(2 * kb if int4 else kb, qweight, scales, offsets, group, n)  # ValueError on a mismatch
    if not qweight.is_contiguous() or (int4 and scales.stride(1) != 1):
        raise ValueError("dequantize_weight: qweight and int4 scales / offsets must be contiguous along K")
    out = torch.empty((n, 2 * kb if int4 else kb), dtype=scales.dtype, device=qweight.device)
    grid = (triton.cdiv(n, DEQUANT_BLOCK_N), triton.cdiv(kb, DEQUANT_BLOCK_B))
    wrap_triton(_dequant_kernel)[grid](qweight, scales, offsets if int4 else scales, out, n, kb,
                                       scales.stride(0), GROUP=group if int4 else 2, INT4=int4,
                                       BLOCK_N=DEQUANT_BLOCK_N, BLOCK_B=DEQUANT_BLOCK_B, num_warps=DEQUANT_WARPS)
    return out
