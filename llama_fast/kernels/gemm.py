"""The small-M decode GEMM: y (M, N) = x (M, K) @ W (N, K)^T for 2 <= M <= 64 rows (a decode step at batch 2-64),
streaming W once on the tensor cores with an fp32 accumulator.

At batch > 1 a decode projection reads the same 13 GB of weights as at batch 1 and does M times the math: still
memory-bound up to M = 64, so the weights are streamed once and each tile is used for every row. The GEMV's
multiply-and-sum (gemv.py) re-reads a weight tile per row; here the product is a tl.dot, and the operands are
swapped ("swap AB", as CUTLASS / TensorRT-LLM / vLLM do for small M): each program multiplies a BLOCK_N x BLOCK_K
weight tile by the transposed BLOCK_K x BLOCK_M input tile, so the weight rows fill the MMA's M side (64 per
warpgroup) and the few input rows its N side, padded to BLOCK_M (16, 32 or 64; masked loads, zero rows).
Loads that feed a tl.dot are pipelined by Triton (cp.async / TMA, num_stages deep), which the GEMV's loads are
not (configs.autotune_configs).

When the cdiv(N, BLOCK_N) output tiles are too few to fill the GPU (wo, w2: 4096 rows = 64 tiles on 132 SMs),
K is split over SPLIT_K programs per tile: each writes its fp32 partial product to a workspace, and the partials
are summed in split order (deterministic: the same bits every run) before the epilogue. In the compiled block a
second small kernel sums them (_split_k_reduce_kernel); in the kernels-only step the GEMM does (SERIAL: the last
of a tile's programs to count in sums them; one launch, and one wait for a finished grid, fewer per split
projection: decode at batch 2 / 8 / 16 1.1 / 1.0-1.5 / 0.7 % faster, docs/PERF.md).

Fused around the product, with the rounding of the unfused torch path (as gemv.py):
  prologue: RMSNorm, g * (x * rstd).to(dtype), with the per-row rstd (M,) fp32 computed by the caller
  epilogues: + residual (wo, w2); SwiGLU, silu(gate) * up with the gate row n and the up row n + N/2 of [gate; up]
  in one program (w13).
Inside the compiled block (the fused-gemm row) RoPE and the K/V cache write stay in torch (model.Attention.attend),
with no PDL. The kernels-only decode step (model.Block.small_m_decode, the fastest path) launches the GEMMs
uncompiled instead, with more fused around them:
  prologue: RMSNorm with each row's rstd from the sum-of-squares partials of x (PROLOGUE_RMSNORM_SS);
  epilogues: the residual forms also write their rows' partials for the next RMSNorm (SS_OUT, one per tile);
  RoPE and the K/V cache write in the wqkv GEMM (EPILOGUE_ROPE_CACHE: a program's rows are dims of one head's
  first half interleaved with their partners d + D/2); PDL where the GPU has it (pdl.py).

Quantized weights (the formats of llama_fast/quant.py, validated by dequant.weight_format; constexpr WFMT) are
loaded packed and turned into the model dtype in registers right before the tl.dot, so a dequantized copy of the
weight never exists in memory (QuantLinear.forward's dequantize-then-F.linear writes and reads one every call: at
batch 2-16 about 2-3x the fp16 path's bytes):
  int8: the tile is q itself converted to the model dtype (exact: |q| <= 127 fits fp16's and bf16's significand)
        and the per-row scale multiplies the fp32 accumulator once after the K loop (exact up to rounding, since
        the scale is constant along K). That is one multiply per output instead of one per weight, the products
        q * x are exact in the fp32 accumulator, and it is what the batch-1 GEMV does (the scale on the fp32 sum):
        the result is closer to q * s * x in exact arithmetic than the reference that rounds q * s to fp16 first.
        In fp16 models q is made in place as q * 2^-24: u = q + 128 under bit 10 of a half is the subnormal
        u * 2^-24, less 128 * 2^-24 (subnormal fp16 arithmetic is exact); inline PTX does 4 weights with one XOR,
        two PRMT and two HSUB2, and the scale carries the 2^24.
  int4: bytes of two weights (low nibble first) unpacked and interleaved back into K order, then q * s + o in
        fp32 with the scale and offset of each weight's group, rounded once to the model dtype: the weights
        dequantize.int4 would write, bit for bit up to FMA contraction. In fp16 models where a K tile lies in one
        group (the pinned 128 at group 128), the weights stay q: each nibble is the fp16 subnormal of its own bits
        (low q * 2^-24, high q * 2^-20; inline PTX makes 8 of them with two PRMT and four AND), the low and the
        high nibbles are two products against the even and the odd columns of x (the odd scaled by 1/16), and
        the group's scale and offset apply once to the tile's fp32 product: s * 2^24 * sum q x + o * sum x, the
        sum of x on the tensor cores too. Otherwise (group 32 / 64 under the pinned tile) q is 1024 + q under
        fp16's exponent less 1024 and q * s + o one fp16 FMA (two weights an instruction), rounded once, without
        the fp32 round trip; BLOCK_K is then a multiple of the group or a divisor of it, both powers of two.
  Both, in fp16 models, take their tile's K order permuted (_k_perm, and x the same way): a thread's part of the
  tensor-core operand is then 4 adjacent bytes of the packed tile (one shared-memory load instead of 2-4 byte
  loads, and one 32-bit register for the inline PTX). Triton's CPU interpreter runs no PTX: there the same halves
  are made a byte at a time (ASM). Compiled for sm_90 at 16 rows (scripts/sass_probe.py --kernel gemm --rows 8):
  int8 3.22 and int4 4.28 instructions a weight in the K loop, against 4.72 and 5.98 with q made as 1024 + q,
  and 6.36 and 7.91 with I2F, byte loads and K in order.

The launch configs are pinned per row bucket in GEMM_CONFIGS below (chosen from the tile arithmetic, to fit
the ~100 KB of shared memory of an sm_86 card as well as Hopper; scripts/gemv_bench.py --gemm times them, and
with --weights int8,int4 the quantized ones, GEMM_QUANT_CONFIGS).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from . import configs
from .dequant import WFMT_DENSE, WFMT_INT4, WFMT_INT8, weight_format
from .pdl import PDL_OFF, gdc_launch_dependents, gdc_wait, interpreting, launch_kwargs, use_pdl

# the value of a half's lowest bit (its smallest subnormal): a bit field below bit 10 read as a half is the field
# times this, exactly (the quantized tiles of fp16 models: _plain_tile, _int4_sub_tiles)
HALF_UNIT = tl.constexpr(2.0 ** -24)
GEMM_MIN_ROWS, GEMM_MAX_ROWS = 2, 64  # batch 1 is the GEMV's (gemv.py); past 64 rows cuBLAS is compute-bound
# fp16 / bf16 weights take the GEMM up to 16 rows only: at 32 the step ran 0.965x cuBLAS's (H200, docs/PERF.md);
# quantized weights take it up to GEMM_MAX_ROWS (the other way dequantizes the whole weight every call)
GEMM_DENSE_MAX_ROWS = 16
# int8 weights take the kernels-only decode step (model.Transformer.small_m_kernels_apply) up to 16 rows, where it
# is measured for them (docs/PERF.md); past that, the compiled step
GEMM_INT8_STEP_MAX_ROWS = 16

PROLOGUE_NONE, PROLOGUE_RMSNORM, PROLOGUE_RMSNORM_SS = 0, 1, 2
EPILOGUE_NONE, EPILOGUE_RESIDUAL, EPILOGUE_SWIGLU, EPILOGUE_ROPE_CACHE = 0, 1, 2, 3

# Pinned configs by BLOCK_M (the rows padded to 16, 32 or 64) and form ("swiglu" streams two weight tiles per
# stage). Shared memory per stage: (BLOCK_N + BLOCK_M) * BLOCK_K * 2 bytes (+ BLOCK_N * BLOCK_K * 2 for SwiGLU);
# every config stays under 96 KB over its stages. The 16-row entries are timed (scripts/gemv_bench.py --gemm 2,8
# --gemm-sweep on an H200: each within a few percent of the sweep's best for Llama-7B's projections); the 32- and
# 64-row ones, which only quantized weights reach (GEMM_DENSE_MAX_ROWS), are not.
GEMM_CONFIGS = {
    (16, "gemm"): {"BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 4},    # 80 KB
    # the RMSNorm prologue at the plain table's tile ran Llama-7B's wqkv at 2 rows in 37.9 us, this one in 28.0.
    # PER_SM 3 splits K only where the output tiles are fewer than about 3 an SM: Llama-3-8B's wqkv (6144 rows,
    # 192 tiles: 384 programs instead of 192 on 132 SMs), its batch-8 step 4.790 against 4.864 / 4.854 ms
    # (scripts/perf_lab.py trial set 34, H200); Llama-7B's wqkv (384 tiles) and heads keep one split
    (16, "rmsnorm"): {"BLOCK_N": 32, "BLOCK_K": 256, "num_warps": 4, "num_stages": 3, "PER_SM": 3},  # 72 KB
    (16, "swiglu"): {"BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4},   # 72 KB
    (32, "gemm"): {"BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 3},    # 72 KB
    (32, "swiglu"): {"BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3},   # 60 KB
    (64, "gemm"): {"BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4},     # 64 KB
    (64, "swiglu"): {"BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3},   # 72 KB
}
# Quantized weights: the same row buckets and forms with a weight tile of 1 byte (int8) or half a byte (int4) per
# element in shared memory, so longer K tiles fit; the shared memory above is counted for int8 (the larger).
# Per stage: BLOCK_N * BLOCK_K (x2 for SwiGLU) + BLOCK_M * BLOCK_K * 2 bytes. The 16-row entries (int8's: int4 has
# its own below) come from the kernels-only step at batch 4 and 8, then scripts/perf_lab.py trial set 33 at batch 8
# and 16 (H200, docs/PERF.md): on sm_90 the dequantized tile feeds a wgmma from registers that Triton waits for in
# the same K iteration, so the loads of the next stages are all that overlaps it; 6 stages of 64-wide K tiles (and
# the deeper K split that shorter tiles allow) ran the batch-8 step in 5.094 ms against 5.946 at 3 stages of 128.
# The 32- and 64-row ones are untimed.
GEMM_QUANT_CONFIGS = {
    (16, "gemm"): {"BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 6, "PER_SM": 8},    # 36 KB
    (16, "rmsnorm"): {"BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 6, "PER_SM": 8},  # 36 KB
    (16, "swiglu"): {"BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 6, "PER_SM": 4},  # 60 KB
    (32, "gemm"): {"BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 4},    # 64 KB
    (32, "swiglu"): {"BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 3},  # 72 KB
    (64, "gemm"): {"BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 3},    # 72 KB
    (64, "swiglu"): {"BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4},   # 64 KB
}
# int4's 16-row forms since its weights became fp16 halves in place (_int4_sub_tiles: 4.3 instructions a weight,
# against 6.0): the x tile's share of each K iteration grew, and 128 output rows over 8 warps prepare it for twice
# the weights. Llama-7B batch 8, the kernels-only step: 4.740 against 5.390 / 5.396 ms/step at the shared entries
# (scripts/perf_lab.py trial set 29, H200); the same tile at 4 warps lost for the plain form (5.710).
GEMM_INT4_CONFIGS = {
    (16, "gemm"): {"BLOCK_N": 128, "BLOCK_K": 128, "num_warps": 8, "num_stages": 3, "PER_SM": 4},    # 36 KB
    (16, "rmsnorm"): {"BLOCK_N": 128, "BLOCK_K": 128, "num_warps": 8, "num_stages": 3, "PER_SM": 4},  # 36 KB
    (16, "swiglu"): {"BLOCK_N": 128, "BLOCK_K": 128, "num_warps": 8, "num_stages": 3, "PER_SM": 2},  # 60 KB
}
# A config may add PER_SM: the programs per SM the K split aims for (default 1). One program of 4 warps per SM
# leaves each scheduler one warp: enough for fp16 tiles, few for quantized ones, whose dequantization is a chain
# of dependent instructions per weight (scripts/gemv_bench.py --gemm-sweep times 1 to 8).
MIN_SPLIT_K_TILES = 8  # each K split streams at least this many BLOCK_K tiles (the pipeline needs a few)
REDUCE_BLOCK = 256  # output columns per program of the split-K reduction
_COUNTERS: dict = {}  # device -> int32 arrival counts of the in-kernel K split, zero between launches


def tile_counters(device: torch.device, tiles: int) -> torch.Tensor:
    """A zeroed int32 count per output tile for the in-kernel K split (SERIAL), shared by every launch on the
    device: each tile's last program sets its count back to 0, and a launch touches the counts only after its wait
    for the kernel before (stream order, or PDL's wait), so launches never overlap on them."""
    cnt = _COUNTERS.get(device)
    if cnt is None or cnt.numel() < tiles:
        cnt = _COUNTERS[device] = torch.zeros(max(tiles, 1024), device=device, dtype=torch.int32)
    return cnt


def block_m(rows: int) -> int:
    """The padded row count of a tl.dot for rows (2..64): 16, 32 or 64."""
    return max(16, triton.next_power_of_2(rows))


def config_key(rows: int, swiglu: bool, wfmt: int = WFMT_DENSE, rmsnorm: bool = False) -> tuple[dict, tuple]:
    """(table, key) of the pinned config for rows input rows, weights of format wfmt (dequant.WFMT_*) and the
    form: SwiGLU (the RMSNorm prologue or not), else the RMSNorm prologue where its row bucket has its own entry,
    else the plain / residual entry; int4 takes GEMM_INT4_CONFIGS' entry where it has one."""
    table = GEMM_CONFIGS if wfmt == WFMT_DENSE else GEMM_QUANT_CONFIGS
    bm = block_m(rows)
    form = "swiglu" if swiglu else "rmsnorm" if rmsnorm and (bm, "rmsnorm") in table else "gemm"
    if wfmt == WFMT_INT4 and (bm, form) in GEMM_INT4_CONFIGS:
        return GEMM_INT4_CONFIGS, (bm, form)
    return table, (bm, form)


def gemm_config(rows: int, swiglu: bool, wfmt: int = WFMT_DENSE, rmsnorm: bool = False) -> dict:
    """The H200's launch config (BLOCK_N, BLOCK_K, num_warps, num_stages, optionally PER_SM) of config_key."""
    table, key = config_key(rows, swiglu, wfmt, rmsnorm)
    return table[key]


_FMT_SUFFIX = {WFMT_DENSE: "", WFMT_INT8: "_int8", WFMT_INT4: "_int4"}


def gemm_form(rows: int, swiglu: bool, wfmt: int = WFMT_DENSE, rmsnorm: bool = False) -> str:
    """The configs' form name of a launch (kernels/configs.py): gemm<BLOCK_M>_<plain | rmsnorm | swiglu>[_int8 |
    _int4], e.g. gemm16_rmsnorm, gemm32_swiglu_int4 (the residual epilogue shares the plain form's config)."""
    kind = "swiglu" if swiglu else "rmsnorm" if rmsnorm else "plain"
    return f"gemm{block_m(rows)}_{kind}{_FMT_SUFFIX[wfmt]}"


def parse_form(form: str) -> tuple[int, bool, int, bool]:
    """gemm_form's inverse, as (rows of the bucket, swiglu, wfmt, rmsnorm)."""
    head, kind, *fmt = form.split("_")
    wfmt = {(): WFMT_DENSE, ("int8",): WFMT_INT8, ("int4",): WFMT_INT4}[tuple(fmt)]
    return int(head[len("gemm"):]), kind == "swiglu", wfmt, kind == "rmsnorm"


def h200_gemm_config(form: str) -> dict:
    """The H200's (the module tables') config of a gemm form (the table's own dict: callers copy before changing
    it, as gemm_call does)."""
    return gemm_config(*parse_form(form))


def launch_config(rows: int, swiglu: bool, wfmt: int, rmsnorm: bool, n: int, K: int) -> dict:
    """The config a launch takes on this GPU (configs.launch_config: the override, the GPU's table entry, else
    its tuned choice): for n output columns (the SwiGLU form: its gate's) and K inputs."""
    return configs.launch_config(gemm_form(rows, swiglu, wfmt, rmsnorm), n, K)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; on the CPU (Triton's interpreter) a nominal 8."""
    if device.type != "cuda":
        return 8
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def choose_split_k(n_tiles: int, K: int, block_k: int, programs: int) -> int:
    """K splits per output tile: about `programs` programs in all (the SM count times the config's PER_SM; the
    tiles alone when they are that many), each split at least MIN_SPLIT_K_TILES K tiles long."""
    k_tiles = triton.cdiv(K, block_k)
    split = max(1, min(round(programs / n_tiles), k_tiles // MIN_SPLIT_K_TILES))
    return triton.cdiv(k_tiles, triton.cdiv(k_tiles, split))  # no empty split


@triton.jit
def _finish(acc, acc_up, y_ptrs, r_ptrs, mask, EPILOGUE: tl.constexpr):
    """Round the fp32 product to the output dtype where torch rounds it, apply the epilogue, store."""
    dt = y_ptrs.dtype.element_ty
    y = acc.to(dt)
    if EPILOGUE == 1:  # + residual, added in fp32 and rounded as torch's fp16 add
        r = tl.load(r_ptrs, mask=mask, other=0.0)
        y = (r.to(tl.float32) + y.to(tl.float32)).to(dt)
    if EPILOGUE == 2:  # silu(gate) * up, each rounded as transformers' fp16 MLP rounds
        gate = y.to(tl.float32)
        up = acc_up.to(dt)
        act = (gate / (1.0 + tl.exp(-gate))).to(dt)
        y = act * up
    tl.store(y_ptrs, y, mask=mask)
    return y


@triton.jit
def _rope_cache(y1, y2, q_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, pos_ptr, u, d1, rm, m_mask, H, HKV, stride_qm,
                stride_cb, stride_ch, stride_cs, stride_rope, D: tl.constexpr):
    """EPILOGUE 3: y1, y2 (dims, rows) fp32 hold dims d1 and d1 + D/2 of head unit u for rows rm, the projection
    already rounded to the model dtype; rotated (q, k: x * cos + swap_halves(x) * sin with the signed sine table,
    each product rounded, as the batch-1 qkv_rope kernel and torch's fp16 ops) with each row's cos / sin
    (stride_rope apart), then q to its output (M, H * D), k and v into the cache slot at pos of row m's batch
    entry. The batch-1 qkv_rope kernel keeps its own copy of this math: called there at one row, this function
    took its fp16 K loop from 119 to 128 instructions (scripts/sass_probe.py --kernel qkv_rope, Triton 3.6)."""
    dt = q_ptr.dtype.element_ty
    mask = m_mask[None, :]
    t_off = rm[None, :] * stride_rope + d1[:, None]  # (HALF, BLOCK_M)
    c1 = tl.load(cos_ptr + t_off, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + t_off + D // 2, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + t_off, mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + t_off + D // 2, mask=mask, other=0.0).to(tl.float32)
    rot1 = ((y1 * c1).to(dt).to(tl.float32) + (y2 * s1).to(dt).to(tl.float32)).to(dt)
    rot2 = ((y2 * c2).to(dt).to(tl.float32) + (y1 * s2).to(dt).to(tl.float32)).to(dt)
    pos = tl.load(pos_ptr)
    if u < H:
        qo = q_ptr + rm[None, :] * stride_qm + u * D + d1[:, None]
        tl.store(qo, rot1, mask=mask)
        tl.store(qo + D // 2, rot2, mask=mask)
    elif u < H + HKV:
        ko = kc_ptr + rm[None, :] * stride_cb + (u - H) * stride_ch + pos * stride_cs + d1[:, None]
        tl.store(ko, rot1, mask=mask)
        tl.store(ko + D // 2, rot2, mask=mask)
    else:
        vo = vc_ptr + rm[None, :] * stride_cb + (u - H - HKV) * stride_ch + pos * stride_cs + d1[:, None]
        tl.store(vo, y1.to(dt), mask=mask)
        tl.store(vo + D // 2, y2.to(dt), mask=mask)


@triton.jit
def _plain_tile(w_ptr, w_off, w_mask, INT8_FP16: tl.constexpr, ASM: tl.constexpr):
    """A tile of the model dtype's or int8's weights (streamed once); with INT8_FP16 int8's q in fp16 and _k_perm's
    order (a thread's four bytes adjacent), as q * 2^-24 exactly: u = q + 128 under bit 10 of a half is the
    subnormal u * 2^-24, less 128 * 2^-24 (subnormal fp16 arithmetic is exact). With ASM, per 4 bytes one XOR,
    two PRMT (each making two halves in place) and two HSUB2; without (Triton's interpreter, which runs no PTX)
    the same halves a byte at a time."""
    w = tl.load(w_ptr + w_off, mask=w_mask, other=0, eviction_policy="evict_first")
    if INT8_FP16:
        w = _k_perm(w.to(tl.uint8, bitcast=True), w.shape[0], w.shape[1], 1)
        if ASM:
            w = tl.inline_asm_elementwise(
                asm="""{
                .reg .b32 t, z, c;
                mov.b32 z, 0;
                mov.b32 c, 0x00800080;
                xor.b32 t, $2, 0x80808080;
                prmt.b32 $0, t, z, 0x4140;
                prmt.b32 $1, t, z, 0x4342;
                sub.f16x2 $0, $0, c;
                sub.f16x2 $1, $1, c;
                }""",
                constraints="=r,=r,r", args=[w], dtype=tl.float16, is_pure=True, pack=4)
        else:
            w = (w ^ 0x80).to(tl.uint16).to(tl.float16, bitcast=True) - 128 * HALF_UNIT
    return w


@triton.jit
def _k_perm(t, R: tl.constexpr, BLOCK_K: tl.constexpr, WFMT: tl.constexpr):
    """t (R, BLOCK_K) with its K order permuted so that what one thread of the tensor-core operand holds is
    adjacent in the packed weights: the same permutation of the weights and of x leaves the product as it is.
    The operand gives a thread the k pairs 2c, 2c + 1 and 2c + 8, 2c + 9 of each 16-k block (c < 4):
      int4 (a byte per pair): column 32 b + 8 i + 2 c + h takes column 32 b + 8 c + 2 i + h (i, c < 4; h the
        nibble): a thread's four pairs of 32 columns are four adjacent bytes;
      int8: column 16 b + 8 m + 2 c + h takes column 16 b + 4 c + 2 m + h (m, h < 2): four adjacent bytes."""
    if WFMT == 2:
        return tl.reshape(tl.permute(tl.reshape(t, (R, BLOCK_K // 32, 4, 4, 2)), (0, 1, 3, 2, 4)), (R, BLOCK_K))
    else:
        return tl.reshape(tl.permute(tl.reshape(t, (R, BLOCK_K // 16, 4, 2, 2)), (0, 1, 3, 2, 4)), (R, BLOCK_K))


@triton.jit
def _int4_tile(w_ptr, s_ptr, o_ptr, rows, n_mask, k0, k_hi, stride_wn, stride_sn, GROUP: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FP16: tl.constexpr):
    """The int4 weights of rows `rows`, columns k0..k0 + BLOCK_K (k0 a multiple of BLOCK_K), dequantized in fp32
    (BLOCK_N, BLOCK_K), or with FP16 in fp16 and _k_perm's order: bytes (BLOCK_N, BLOCK_K / 2) unpacked low
    nibble first, q * s + o with the scale and offset of each weight's group. Columns past k_hi (even: K is a
    multiple of the group) come out 0."""
    kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    b_mask = n_mask[:, None] & (kb < k_hi // 2)[None, :]
    b = tl.load(w_ptr + rows[:, None] * stride_wn + kb[None, :], mask=b_mask, other=0,
                eviction_policy="evict_first")  # streamed once
    if FP16:  # q exactly, as 1024 + q under fp16's exponent less 1024 (no integer-to-float conversion)
        b32 = b.to(tl.uint32)
        t = ((b32 | (b32 << 12)) & 0x000F000F) | 0x64006400  # low nibble in the low half, high in the high
        lo = (t & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True)
        hi = (t >> 16).to(tl.uint16).to(tl.float16, bitcast=True)
        q = _k_perm(tl.interleave(lo, hi) - 1024.0, BLOCK_N, BLOCK_K, 2)
    else:
        q = tl.interleave(b & 0xF, b >> 4).to(tl.float32)  # byte j -> k = 2j (low), 2j + 1 (high)
    GW: tl.constexpr = GROUP if GROUP < BLOCK_K else BLOCK_K  # a tile's weights per group
    NG: tl.constexpr = BLOCK_K // GW  # groups per tile (1 when BLOCK_K divides the group)
    rg = k0 // GROUP + tl.arange(0, NG)
    g_off = rows[:, None] * stride_sn + rg[None, :]
    g_mask = n_mask[:, None] & (rg * GROUP < k_hi)[None, :]
    s = tl.load(s_ptr + g_off, mask=g_mask, other=0.0, eviction_policy="evict_first")
    o = tl.load(o_ptr + g_off, mask=g_mask, other=0.0, eviction_policy="evict_first")
    if not FP16:
        s, o = s.to(tl.float32), o.to(tl.float32)
    if NG > 1:  # each group's scale and offset along its GW weights
        s = tl.reshape(tl.broadcast_to(s[:, :, None], (BLOCK_N, NG, GW)), (BLOCK_N, BLOCK_K))
        o = tl.reshape(tl.broadcast_to(o[:, :, None], (BLOCK_N, NG, GW)), (BLOCK_N, BLOCK_K))
    return q * s + o  # NG == 1: (BLOCK_N, 1) broadcast along the tile


@triton.jit
def _int4_sub_tiles(w_ptr, rows, n_mask, k0, k_hi, stride_wn, BLOCK_K: tl.constexpr, ASM: tl.constexpr):
    """int4 in fp16 models, K tile k0.. of rows `rows`: two (BLOCK_N, BLOCK_K / 2) fp16 tiles, the low nibbles
    (k = 2 i) and the high ones (k = 2 i + 1), each weight the fp16 of its own bits (a field below bit 10 of a half
    is the subnormal value * 2^-24 exactly): low q * 2^-24, high (bits 4-7) q * 2^-20, in _k_perm's order (a
    thread's four bytes adjacent). With ASM, per 4 bytes (8 weights) two PRMT and four AND, each making two halves
    in place; no conversion and no constant to take out. Without (Triton's interpreter, which runs no PTX) the
    same halves a byte at a time."""
    kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    m = n_mask[:, None] & (kb < k_hi // 2)[None, :]
    b = tl.load(w_ptr + rows[:, None] * stride_wn + kb[None, :], mask=m, other=0,
                eviction_policy="evict_first")  # streamed once
    b = _k_perm(b.to(tl.uint8, bitcast=True), b.shape[0], BLOCK_K // 2, 1)
    if not ASM:
        return ((b & 0x0F).to(tl.uint16).to(tl.float16, bitcast=True),
                (b & 0xF0).to(tl.uint16).to(tl.float16, bitcast=True))
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 t0, t1;
        prmt.b32 t0, $4, $4, 0x1100;
        prmt.b32 t1, $4, $4, 0x3322;
        and.b32 $0, t0, 0x000F000F;
        and.b32 $1, t1, 0x000F000F;
        and.b32 $2, t0, 0x00F000F0;
        and.b32 $3, t1, 0x00F000F0;
        }""",
        constraints="=r,=r,=r,=r,r", args=[b], dtype=(tl.float16, tl.float16),
        is_pure=True, pack=4)


@triton.jit
def _x_tile(x_ptr, g_ptr, rm, k, m_mask, k_mask, stride_xm, rstd, PROLOGUE: tl.constexpr):
    """The input tile (BLOCK_M, BLOCK_K) of rows rm, columns k, with the RMSNorm prologue applied:
    g * (x * rstd).to(dtype), as transformers' LlamaRMSNorm."""
    x = tl.load(x_ptr + rm[:, None] * stride_xm + k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
    if PROLOGUE != 0:
        g = tl.load(g_ptr + k, mask=k_mask, other=0.0)
        x = g[None, :] * (x.to(tl.float32) * rstd[:, None]).to(x_ptr.dtype.element_ty)
    return x


@triton.jit
def _x_halves(x, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """x (BLOCK_M, BLOCK_K) as two transposed (BLOCK_K / 2, BLOCK_M) tiles, the even columns and the odd ones, the
    odd scaled by 1/16 (exact but below 2^-10: a power of two) for _int4_sub_tiles' high nibbles."""
    xe, xo = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_K // 2, 2)))
    xe, xo = _k_perm(xe, BLOCK_M, BLOCK_K // 2, 1), _k_perm(xo * 0.0625, BLOCK_M, BLOCK_K // 2, 1)
    return tl.trans(xe), tl.trans(xo)


@triton.jit
def _gemm_kernel(x_ptr, w_ptr, y_ptr, part_ptr, res_ptr, g_ptr, rstd_ptr, s_ptr, o_ptr, M, N, K, K_SPLIT,
                 stride_xm, stride_wn, stride_ym, stride_rm, stride_sn, ss_ptr, ss_out_ptr, cos_ptr, sin_ptr, kc_ptr,
                 vc_ptr, pos_ptr, NSS, NSS_OUT, eps, H, HKV, stride_cb, stride_ch, stride_cs, stride_rope, cnt_ptr,
                 PROLOGUE: tl.constexpr, EPILOGUE: tl.constexpr, SPLIT_K: tl.constexpr, PRECISION: tl.constexpr,
                 WFMT: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, NSS_BLOCK: tl.constexpr, SS_OUT: tl.constexpr, ROPE_D: tl.constexpr,
                 USE_PDL: tl.constexpr, SERIAL: tl.constexpr, ASM: tl.constexpr = True):
    """Output tile rows rn (of N; with SwiGLU also the up rows rn + N) x all M input rows, over the K range of
    split pid_k: acc (BLOCK_N, BLOCK_M) = W[rn, k] @ x[:, k]^T. WFMT: the weight format (dequant.WFMT_*), the
    quantized ones dequantized in registers (int8: q, the row scale applied to acc after the K loop; int4:
    _int4_tile); stride_wn in elements of w_ptr (bytes for quantized weights), stride_sn the int4 scales'.
    The decode step's kernels-only form (gemm.py's docstring) adds: PROLOGUE 2, RMSNorm with each row's rstd
    from its NSS sum-of-squares partials (ss_ptr, (M, NSS) fp32); SS_OUT, the stored rows' partials (one per
    program, ss_out_ptr (M, NSS_OUT)); EPILOGUE 3, RoPE and the K/V cache write (the program's rows are
    BLOCK_N / 2 dims of one head's first half interleaved with their partners d + ROPE_D / 2); USE_PDL; SERIAL,
    the K split summed in the kernel: the last of a tile's SPLIT_K programs to count in on cnt_ptr[pid_n] sums
    the partials in split order and applies the epilogue (no reduce kernel)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    if EPILOGUE == 3:  # head unit u (q heads, then k, then v), rows d1 and d1 + D/2 interleaved: [r1_0, r2_0, ...]
        HALF: tl.constexpr = BLOCK_N // 2
        u = pid_n // (ROPE_D // BLOCK_N)
        d1 = (pid_n % (ROPE_D // BLOCK_N)) * HALF + tl.arange(0, HALF)
        rn = tl.reshape(tl.join(u * ROPE_D + d1, u * ROPE_D + d1 + ROPE_D // 2), (BLOCK_N,))
    else:
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        u, d1 = 0, rn  # unused: RoPE's head unit and dims
    rm = tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    n_mask = rn < N
    m_mask = rm < M
    dt = x_ptr.dtype.element_ty
    k_lo = pid_k * K_SPLIT
    k_hi = tl.minimum(K, k_lo + K_SPLIT)
    if USE_PDL != 0:
        gdc_wait()  # x, its partials and the residual come from the kernels before; nothing is written before this
    if USE_PDL == 1:
        gdc_launch_dependents()
    rstd = 0.0  # no prologue: unused
    if PROLOGUE == 1:
        rstd = tl.load(rstd_ptr + rm, mask=m_mask, other=0.0)
    if PROLOGUE == 2:  # each row's 1 / RMS from its partials; float scalars may arrive as fp64: keep fp32
        rp = tl.arange(0, NSS_BLOCK)
        ss = tl.load(ss_ptr + rm[:, None] * NSS + rp[None, :], mask=m_mask[:, None] & (rp < NSS)[None, :],
                     other=0.0)
        rstd = (1.0 / tl.sqrt(tl.sum(ss, axis=1) / K + eps)).to(tl.float32)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    acc_up = acc
    # int4 in fp16 models, a tile within one group: the weights as subnormal halves (_int4_sub_tiles), the group's
    # scale and offset on the tile's fp32 product
    SUB: tl.constexpr = WFMT == 2 and dt == tl.float16 and GROUP % BLOCK_K == 0 and BLOCK_K >= 64
    ones = tl.full((BLOCK_N, BLOCK_K // 2), 1.0, dtype=tl.float16)
    sixteens = tl.full((BLOCK_N, BLOCK_K // 2), 16.0, dtype=tl.float16)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + rk
        k_mask = k < k_hi
        w_off = rn[:, None] * stride_wn + k[None, :]
        w_mask = n_mask[:, None] & k_mask[None, :]
        if SUB:
            xe, xo = _x_halves(_x_tile(x_ptr, g_ptr, rm, k, m_mask, k_mask, stride_xm, rstd, PROLOGUE), BLOCK_M,
                               BLOCK_K)
            kg = k0 // GROUP
            lo, hi = _int4_sub_tiles(w_ptr, rn, n_mask, k0, k_hi, stride_wn, BLOCK_K, ASM)
            t = tl.dot(hi, xo, tl.dot(lo, xe))  # (BLOCK_N, BLOCK_M) = 2^-24 sum q x over the tile
            # sum x over the tile, for the group's offset, on the tensor cores too (every row the same)
            xsum = tl.dot(sixteens, xo, tl.dot(ones, xe))
            sg = tl.load(s_ptr + rn * stride_sn + kg, mask=n_mask, other=0.0).to(tl.float32) / HALF_UNIT
            og = tl.load(o_ptr + rn * stride_sn + kg, mask=n_mask, other=0.0).to(tl.float32)
            acc += t * sg[:, None] + og[:, None] * xsum
            if EPILOGUE == 2:
                lo, hi = _int4_sub_tiles(w_ptr, rn + N, n_mask, k0, k_hi, stride_wn, BLOCK_K, ASM)
                t = tl.dot(hi, xo, tl.dot(lo, xe))
                sg = tl.load(s_ptr + (rn + N) * stride_sn + kg, mask=n_mask, other=0.0).to(tl.float32) / HALF_UNIT
                og = tl.load(o_ptr + (rn + N) * stride_sn + kg, mask=n_mask, other=0.0).to(tl.float32)
                acc_up += t * sg[:, None] + og[:, None] * xsum
        else:
            if WFMT == 2:
                w = _int4_tile(w_ptr, s_ptr, o_ptr, rn, n_mask, k0, k_hi, stride_wn, stride_sn, GROUP, BLOCK_N,
                               BLOCK_K, dt == tl.float16).to(dt)
            else:  # the model dtype, or int8's q converted exactly
                w = _plain_tile(w_ptr, w_off, w_mask, WFMT == 1 and dt == tl.float16, ASM).to(dt)
            x = _x_tile(x_ptr, g_ptr, rm, k, m_mask, k_mask, stride_xm, rstd, PROLOGUE)
            if WFMT != 0 and dt == tl.float16:  # the quantized tiles' K order (_int4_tile, _plain_tile)
                x = _k_perm(x, BLOCK_M, BLOCK_K, WFMT)
            xt = tl.trans(x)
            acc = tl.dot(w, xt, acc, input_precision=PRECISION)
            if EPILOGUE == 2:
                if WFMT == 2:
                    w_up = _int4_tile(w_ptr, s_ptr, o_ptr, rn + N, n_mask, k0, k_hi, stride_wn, stride_sn, GROUP,
                                      BLOCK_N, BLOCK_K, dt == tl.float16).to(dt)
                else:
                    w_up = _plain_tile(w_ptr + N * stride_wn, w_off, w_mask, WFMT == 1 and dt == tl.float16,
                                       ASM).to(dt)
                acc_up = tl.dot(w_up, xt, acc_up, input_precision=PRECISION)
    if WFMT == 1:  # int8: the per-row scale, constant along K, once on the fp32 sums (fp16: of q * 2^-24 x)
        unit = 1.0 / HALF_UNIT if dt == tl.float16 else 1.0
        acc = acc * (tl.load(s_ptr + rn, mask=n_mask, other=0.0).to(tl.float32) * unit)[:, None]
        if EPILOGUE == 2:
            acc_up = acc_up * (tl.load(s_ptr + N + rn, mask=n_mask, other=0.0).to(tl.float32) * unit)[:, None]
    if USE_PDL == 2:
        gdc_launch_dependents()
    out_mask = n_mask[:, None] & m_mask[None, :]
    if SPLIT_K == 1:
        _epilogue(acc, acc_up, y_ptr, res_ptr, ss_out_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, pos_ptr, u, d1, rn, rm,
                  out_mask, m_mask, pid_n, stride_ym, stride_rm, NSS_OUT, H, HKV, stride_cb, stride_ch, stride_cs,
                  stride_rope, EPILOGUE, SS_OUT, ROPE_D, BLOCK_N, BLOCK_M)
    else:  # fp32 partials (SPLIT_K, M, NW): NW = N, or 2N with the up rows after the gate rows
        NW = N * 2 if EPILOGUE == 2 else N
        p_ptrs = part_ptr + (pid_k * M + rm[None, :]) * NW + rn[:, None]
        tl.store(p_ptrs, acc, mask=out_mask)
        if EPILOGUE == 2:
            tl.store(p_ptrs + N, acc_up, mask=out_mask)
        if SERIAL:
            tl.debug_barrier()  # every thread's partials stored before the count releases them
            arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
            if arrived == SPLIT_K - 1:  # the tile's last split: the others' partials are visible (acquire)
                tl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed", scope="gpu")  # zero for the next launch
                acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
                acc_up = acc
                for sk in tl.static_range(SPLIT_K):  # split order, as _split_k_reduce_kernel: the same bits
                    q_ptrs = part_ptr + (sk * M + rm[None, :]) * NW + rn[:, None]
                    acc += tl.load(q_ptrs, mask=out_mask, other=0.0, cache_modifier=".cg")
                    if EPILOGUE == 2:
                        acc_up += tl.load(q_ptrs + N, mask=out_mask, other=0.0, cache_modifier=".cg")
                _epilogue(acc, acc_up, y_ptr, res_ptr, ss_out_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, pos_ptr, u,
                          d1, rn, rm, out_mask, m_mask, pid_n, stride_ym, stride_rm, NSS_OUT, H, HKV, stride_cb,
                          stride_ch, stride_cs, stride_rope, EPILOGUE, SS_OUT, ROPE_D, BLOCK_N, BLOCK_M)


@triton.jit
def _epilogue(acc, acc_up, y_ptr, res_ptr, ss_out_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, pos_ptr, u, d1, rn, rm,
              out_mask, m_mask, pid_n, stride_ym, stride_rm, NSS_OUT, H, HKV, stride_cb, stride_ch, stride_cs,
              stride_rope, EPILOGUE: tl.constexpr, SS_OUT: tl.constexpr, ROPE_D: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """_gemm_kernel's epilogue on a whole tile's fp32 product acc (BLOCK_N, BLOCK_M) (and acc_up): RoPE and the
    cache write (EPILOGUE 3), else _finish and, with SS_OUT, the tile's share of each stored row's sum of squares
    (ss_out_ptr (M, NSS_OUT), column pid_n)."""
    dt = y_ptr.dtype.element_ty
    if EPILOGUE == 3:  # the rows' dims d1 and d1 + D/2, interleaved
        HALF_N: tl.constexpr = BLOCK_N // 2
        y1, y2 = tl.split(tl.permute(tl.reshape(acc.to(dt).to(tl.float32), (HALF_N, 2, BLOCK_M)), (0, 2, 1)))
        _rope_cache(y1, y2, y_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, pos_ptr, u, d1, rm, m_mask, H, HKV, stride_ym,
                    stride_cb, stride_ch, stride_cs, stride_rope, ROPE_D)
    else:
        y = _finish(acc, acc_up, y_ptr + rm[None, :] * stride_ym + rn[:, None],
                    res_ptr + rm[None, :] * stride_rm + rn[:, None], out_mask, EPILOGUE)
        if SS_OUT:  # this program's share of each stored row's sum of squares
            yf = tl.where(out_mask, y.to(tl.float32), 0.0)
            tl.store(ss_out_ptr + rm * NSS_OUT + pid_n, tl.sum(yf * yf, axis=0), mask=m_mask)


@triton.jit
def _split_k_reduce_kernel(part_ptr, y_ptr, res_ptr, M, N, stride_ym, stride_rm, EPILOGUE: tl.constexpr,
                           SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    """Row m, columns rn: the SPLIT_K partials summed in split order (deterministic), then the epilogue (the
    compiled block's K split; the kernels-only step's GEMMs sum theirs themselves, SERIAL)."""
    m = tl.program_id(1)
    rn = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = rn < N
    NW = N * 2 if EPILOGUE == 2 else N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    acc_up = acc
    for s in tl.static_range(SPLIT_K):
        p = part_ptr + (s * M + m) * NW + rn
        acc += tl.load(p, mask=mask, other=0.0)
        if EPILOGUE == 2:
            acc_up += tl.load(p + N, mask=mask, other=0.0)
    _finish(acc, acc_up, y_ptr + m * stride_ym + rn, res_ptr + m * stride_rm + rn, mask, EPILOGUE)


def _launch(x, w, res, g, rstd, prologue: int, epilogue: int, split_k: int, scales=None, offsets=None,
            group: int = 0, **step) -> torch.Tensor:
    """y (M, n) of the fused GEMM (n = w rows, half of them with SwiGLU). split_k 0: choose_split_k. With scales,
    w is a quantized weight (dequant.weight_format). step: gemm_call's keywords of the kernels-only decode step;
    with ss_out, (y, its partials)."""
    grid, args, kwargs, y, part, ss_out, split = gemm_call(x, w, res, g, rstd, prologue, epilogue, split_k, scales,
                                                           offsets, group, sm_count(x.device), **step)
    wrap_triton(_gemm_kernel)[grid](*args, **kwargs)
    if split > 1 and not kwargs["SERIAL"]:  # SERIAL: the GEMM summed its split itself
        M, n = y.shape
        res = args[4]  # as launched: y where there is none
        wrap_triton(_split_k_reduce_kernel)[(triton.cdiv(n, REDUCE_BLOCK), M)](
            part, y, res, M, n, y.stride(0), res.stride(0), EPILOGUE=epilogue, SPLIT_K=split, BLOCK=REDUCE_BLOCK,
            num_warps=4)
    return y if ss_out is None else (y, ss_out)


def gemm_call(x, w, res, g, rstd, prologue: int, epilogue: int, split_k: int, scales, offsets, group: int,
              sms: int, ss=None, eps: float = 0.0, ss_out: bool = False, rope=None, pdl: int = PDL_OFF) -> tuple:
    """(grid, arguments, keywords, y, split-K partials, sum-of-squares partials or None, splits) of _launch's
    _gemm_kernel launch on a GPU of sms SMs. Also what scripts/sass_probe.py compiles offline.
    The kernels-only decode step's keywords: ss (M, NSS) fp32 and eps with PROLOGUE_RMSNORM_SS; ss_out, the
    partials of the rows written (EPILOGUE_RESIDUAL); rope = (cos, sin (M, D) of each row's position, k_cache,
    v_cache (B, Hkv, S, D), input_pos (1,), n_heads) with EPILOGUE_ROPE_CACHE (y: q, (M, n_heads * D)); pdl, a
    use_pdl result. With any of them a K split is summed in the GEMM itself (SERIAL), else by
    _split_k_reduce_kernel."""
    M, K = x.shape
    if not GEMM_MIN_ROWS <= M <= GEMM_MAX_ROWS:
        raise ValueError(f"the small-M GEMM takes {GEMM_MIN_ROWS}..{GEMM_MAX_ROWS} rows, got {M}")
    if scales is None and w.shape[1] != K:
        raise ValueError(f"weight of {w.shape[1]} columns for an input of {K}")
    wfmt, group, _, _ = weight_format(x, w, scales, offsets, group, w.shape[0])  # the packed w as it is
    x = x if x.stride(1) == 1 else x.contiguous()
    w = w if w.stride(1) == 1 else w.contiguous()
    n = w.shape[0] // 2 if epilogue == EPILOGUE_SWIGLU else w.shape[0]
    cfg = dict(launch_config(M, epilogue == EPILOGUE_SWIGLU, wfmt, prologue != PROLOGUE_NONE, n, K))
    bm, bn, bk = block_m(M), cfg.pop("BLOCK_N"), cfg.pop("BLOCK_K")
    per_sm = cfg.pop("PER_SM", 1)
    rope_d, heads, hkv = 0, 0, 0
    if epilogue == EPILOGUE_ROPE_CACHE:
        cos, sin, k_cache, v_cache, input_pos, heads = rope
        rope_d, hkv = cos.shape[-1], k_cache.shape[1]
        bn = min(bn, rope_d & -rope_d)  # a power of two that divides the head dim (its largest, at most the config's)
        if bn < 16 or n != (heads + 2 * hkv) * rope_d:
            raise ValueError(f"RoPE in the GEMM: {n} rows for {heads} + 2 x {hkv} heads of {rope_d}, tile {bn}")
    n_tiles = triton.cdiv(n, bn)
    split = split_k or choose_split_k(n_tiles, K, bk, sms * per_sm)
    k_split = triton.cdiv(triton.cdiv(K, bk), split) * bk  # a whole number of K tiles per split
    split = triton.cdiv(K, k_split)
    # fp32 models: a true fp32 product, not TF32 (fp16 / bf16 products are exact either way)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    y = torch.empty((M, heads * rope_d if rope_d else n), device=x.device, dtype=x.dtype)
    # unused pointer arguments get y (never read)
    res = res if res is not None else y
    g = g if g is not None else y
    rstd = rstd if rstd is not None else y
    if wfmt == WFMT_INT4 and offsets.stride(1) != 1:  # scales and offsets share strides (weight_format)
        scales, offsets = scales.contiguous(), offsets.contiguous()
    s = y if scales is None else scales.contiguous() if wfmt == WFMT_INT8 else scales
    o = offsets if offsets is not None else s
    part = (torch.empty((split, M, 2 * n if epilogue == EPILOGUE_SWIGLU else n), device=x.device,
                        dtype=torch.float32) if split > 1 else y)
    serial = split > 1 and (ss is not None or ss_out or rope is not None or pdl != PDL_OFF)
    nss_out = n_tiles if ss_out else 0
    ss_out_t = torch.empty((M, nss_out), device=x.device, dtype=torch.float32) if ss_out else None
    if prologue == PROLOGUE_RMSNORM_SS and (ss is None or ss.shape[0] != M or ss.stride(1) != 1):
        raise ValueError("the RMSNorm prologue from partials takes ss (M, NSS) with unit column stride")
    nss = ss.shape[1] if prologue == PROLOGUE_RMSNORM_SS else 0
    if rope_d:
        rope_args = (cos, sin, k_cache, v_cache, input_pos, heads, hkv, k_cache.stride(0), k_cache.stride(1),
                     k_cache.stride(2), cos.stride(0))
    else:
        rope_args = (y, y, y, y, y, 0, 0, 0, 0, 0, 0)
    args = (x, w, y, part, res, g, rstd, s, o, M, n, K, k_split, x.stride(0), w.stride(0), y.stride(0),
            res.stride(0), s.stride(0) if wfmt == WFMT_INT4 else 0, ss if nss else y,
            ss_out_t if ss_out else y, *rope_args[:5], nss, nss_out, float(eps), *rope_args[5:],
            tile_counters(x.device, n_tiles) if serial else y)
    kwargs = dict(PROLOGUE=prologue, EPILOGUE=epilogue, SPLIT_K=split, PRECISION=precision, WFMT=wfmt, GROUP=group,
                  BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, NSS_BLOCK=triton.next_power_of_2(max(nss, 1)),
                  SS_OUT=bool(ss_out), ROPE_D=rope_d, USE_PDL=pdl, SERIAL=serial, ASM=not interpreting(), **cfg,
                  **launch_kwargs(pdl))
    return (n_tiles, split), args, kwargs, y, part, ss_out_t, split


def _prologue(rstd, g) -> int:
    if (rstd is None) != (g is None):
        raise ValueError("the RMSNorm prologue takes both rstd and g")
    return PROLOGUE_NONE if rstd is None else PROLOGUE_RMSNORM


@triton_op("llama_fast::small_m_gemm", mutates_args=())
def small_m_gemm(x: torch.Tensor, w: torch.Tensor, rstd: torch.Tensor | None = None, g: torch.Tensor | None = None,
                 split_k: int = 0, scales: torch.Tensor | None = None, offsets: torch.Tensor | None = None,
                 group: int = 0) -> torch.Tensor:
    """x (M, K) @ w (N, K)^T -> (M, N) in x.dtype, 2 <= M <= 64. With rstd (M,) fp32 and g (K,): the RMSNorm
    prologue, x's row m taken as g * (x[m] * rstd[m]).to(dtype). split_k: K splits per output tile (0: one
    program per SM in all, choose_split_k), as in every op below.
    Quantized weights (llama_fast/quant.py), as the GEMV ops take them: w the qweight, scales (N,) for int8;
    scales and offsets (N, K // group) for int4 (dequant.weight_format). The same three arguments in every op
    below."""
    return _launch(x, w, None, g, rstd, _prologue(rstd, g), EPILOGUE_NONE, split_k, scales, offsets, group)


@triton_op("llama_fast::small_m_gemm_residual", mutates_args=())
def small_m_gemm_residual(x: torch.Tensor, w: torch.Tensor, res: torch.Tensor, split_k: int = 0,
                          scales: torch.Tensor | None = None, offsets: torch.Tensor | None = None,
                          group: int = 0) -> torch.Tensor:
    """res + x @ w^T: x (M, K), w (N, K), res (M, N) -> (M, N), the product rounded before the add."""
    return _launch(x, w, res, None, None, PROLOGUE_NONE, EPILOGUE_RESIDUAL, split_k, scales, offsets, group)


@triton_op("llama_fast::small_m_gemm_swiglu", mutates_args=())
def small_m_gemm_swiglu(x: torch.Tensor, w13: torch.Tensor, rstd: torch.Tensor | None = None,
                        g: torch.Tensor | None = None, split_k: int = 0, scales: torch.Tensor | None = None,
                        offsets: torch.Tensor | None = None, group: int = 0) -> torch.Tensor:
    """silu(gate) * up of x @ w13^T, w13 (2I, K) = [gate; up] -> (M, I); the RMSNorm prologue as small_m_gemm."""
    return _launch(x, w13, None, g, rstd, _prologue(rstd, g), EPILOGUE_SWIGLU, split_k, scales, offsets, group)


# The kernels-only decode step at batch 2-64 (model.Block.small_m_decode): plain Python, run uncompiled inside the
# step's CUDA graph, each launch with PDL where the GPU has it (pdl.use_pdl). RMSNorm takes each row's rstd from
# the sum-of-squares partials the residual GEMM before wrote, so no kernel of its own is left.

def small_m_qkv_rope(x: torch.Tensor, wqkv: torch.Tensor, ss: torch.Tensor, g: torch.Tensor, eps: float,
                     cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     input_pos: torch.Tensor, n_heads: int, pdl: int = PDL_OFF, scales=None, offsets=None,
                     group: int = 0) -> torch.Tensor:
    """q (M, n_heads * D) = RoPE(rmsnorm(x) @ wqkv^T)[:, :n_heads * D] for x (M, K) at one position input_pos (1,):
    ss (M, NSS) x's sum-of-squares partials, cos and sin (M, D) each row's tables (sin signed: -sin on the first
    half); the rotated k and v of row m written into k_cache / v_cache (B >= M, Hkv, S, D) at slot input_pos."""
    return _launch(x, wqkv, None, g, None, PROLOGUE_RMSNORM_SS, EPILOGUE_ROPE_CACHE, 0, scales, offsets, group,
                   ss=ss, eps=eps, rope=(cos, sin, k_cache, v_cache, input_pos, n_heads), pdl=use_pdl(x, pdl))


def small_m_residual_ss(x: torch.Tensor, w: torch.Tensor, res: torch.Tensor, pdl: int = PDL_OFF, scales=None,
                        offsets=None, group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(res + x @ w^T, its rows' sum-of-squares partials (M, NSS) fp32) for the next RMSNorm prologue."""
    return _launch(x, w, res, None, None, PROLOGUE_NONE, EPILOGUE_RESIDUAL, 0, scales, offsets, group, ss_out=True,
                   pdl=use_pdl(x, pdl))


def small_m_swiglu_ss(x: torch.Tensor, w13: torch.Tensor, ss: torch.Tensor, g: torch.Tensor, eps: float,
                      pdl: int = PDL_OFF, scales=None, offsets=None, group: int = 0) -> torch.Tensor:
    """silu(gate) * up of rmsnorm(x) @ w13^T, the RMSNorm's rstd from x's partials ss (M, NSS)."""
    return _launch(x, w13, None, g, None, PROLOGUE_RMSNORM_SS, EPILOGUE_SWIGLU, 0, scales, offsets, group, ss=ss,
                   eps=eps, pdl=use_pdl(x, pdl))


def small_m_rmsnorm_ss(x: torch.Tensor, w: torch.Tensor, ss: torch.Tensor, g: torch.Tensor, eps: float,
                       pdl: int = PDL_OFF, scales=None, offsets=None, group: int = 0) -> torch.Tensor:
    """rmsnorm(x) @ w^T, the rstd from x's partials ss (M, NSS) (the output head of the step)."""
    return _launch(x, w, None, g, None, PROLOGUE_RMSNORM_SS, EPILOGUE_NONE, 0, scales, offsets, group, ss=ss,
                   eps=eps, pdl=use_pdl(x, pdl))


def rows_ss(x: torch.Tensor) -> torch.Tensor:
    """(M, 1) fp32 sum of squares of each row of x (M, K): the first block's partials (torch)."""
    return x.float().pow(2).sum(-1, keepdim=True)
