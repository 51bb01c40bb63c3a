"""Split-K decode attention over the static KV cache: one query per row (the decode step).

One program per (batch*head, chunk of the cache), each a softmax over its one tile of the cache; the chunks are
then combined, by a second kernel (decode_attention) or by the last program of each head to finish
(decode_attention_one_launch: one kernel per layer fewer; a per-head arrival counter, left at zero for the next
call). Masked-out slots are never loaded (masked loads), so only the attended prefix of the cache is read.

The kernels are plain @triton.jit with the warps a launch argument (configs.ATTN_*): wrapped in a one-config,
empty-kwargs triton.autotune, torch 2.11's Inductor called the compiled one-launch kernel's launcher one
argument short ("launcher() missing 1 required positional argument: '_grid_2'", docs/PERF.md).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from . import configs
from .configs import ATTN_CHUNK, ATTN_COMPILED_WARPS, ATTN_PDL_MAXNREG, attention_form, pinned_config
from .gemm import sm_count
from .pdl import PDL_OFF, PDL_TRIGGER_EARLY, gdc_launch_dependents, gdc_wait, launch_kwargs, use_pdl


@triton.jit
def _chunk_kv(k_ptr, v_ptr, mask_ptr, b, hk, j, S, sk_b, sk_h, sk_s, sm_b, D: tl.constexpr, CHUNK: tl.constexpr,
              USE_PDL: tl.constexpr, NEWEST_AFTER_WAIT: tl.constexpr):
    """(attended ok (CHUNK,), K, V (CHUNK, D)) of chunk j of KV head hk of row b, loaded before the PDL wait
    (which this makes)."""
    rd = tl.arange(0, D)
    rs = j * CHUNK + tl.arange(0, CHUNK)
    ok = tl.load(mask_ptr + b * sm_b + rs, mask=rs < S, other=0) != 0  # written before the step's kernels
    kv_off = b * sk_b + hk * sk_h + rs[:, None] * sk_s + rd[None, :]
    k = tl.load(k_ptr + kv_off, mask=ok[:, None], other=0.0)  # masked slots are never read
    v = tl.load(v_ptr + kv_off, mask=ok[:, None], other=0.0)
    if USE_PDL != 0:
        gdc_wait()
    if NEWEST_AFTER_WAIT:  # the cache was loaded before the wait; only the newest attended slot (this step's
        # token, which the previous kernel may be writing) is read again after it. In a chunk before the
        # newest slot's, the row read again is its last one, unchanged. (Separate from USE_PDL: Triton's
        # interpreter, which has no gdc ops, tests this part.)
        last = tl.max(tl.where(ok, rs, -1), axis=0)
        # .cg: from L2, never this SM's L1 copy of the stale row loaded above
        # (no attended slot in this chunk: last = -1 matches no row; slot 0 is read and unused)
        row = b * sk_b + hk * sk_h + tl.maximum(last, 0) * sk_s + rd
        k_last = tl.load(k_ptr + row, cache_modifier=".cg")
        v_last = tl.load(v_ptr + row, cache_modifier=".cg")
        newest = (rs == last)[:, None]
        k = tl.where(newest, k_last[None, :], k)
        v = tl.where(newest, v_last[None, :], v)
    return ok, k, v


@triton.jit
def _attn_chunk(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, bh, j, S, H, G, scale,
                sq_b, sq_h, sk_b, sk_h, sk_s, sm_b, NSPLIT, D: tl.constexpr, CHUNK: tl.constexpr,
                USE_PDL: tl.constexpr, NEWEST_AFTER_WAIT: tl.constexpr):
    """Softmax statistics (max m, sum l) and the unnormalized output of chunk j of head bh -> partials.
    With PDL, the next kernel may launch once the chunk's products are done (PDL_TRIGGER_LATE)."""
    b = bh // H
    h = bh % H
    rd = tl.arange(0, D)
    ok, k, v = _chunk_kv(k_ptr, v_ptr, mask_ptr, b, h // G, j, S, sk_b, sk_h, sk_s, sm_b, D, CHUNK, USE_PDL,
                         NEWEST_AFTER_WAIT)
    # float scalars may arrive as fp64 (inductor types a float argument by its value): keep the math in fp32
    q = (tl.load(q_ptr + b * sq_b + h * sq_h + rd).to(tl.float32) * scale).to(tl.float32)
    scores = tl.where(ok, tl.sum(k.to(tl.float32) * q[None, :], axis=1), float("-inf"))
    m = tl.max(scores, axis=0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    p = tl.exp(scores - m_safe)
    l = tl.sum(p, axis=0)
    acc = tl.sum(p[:, None] * v.to(tl.float32), axis=0)
    if USE_PDL != 0:
        gdc_launch_dependents()
    out = bh * NSPLIT + j
    tl.store(m_ptr + out, m)
    tl.store(l_ptr + out, l)
    tl.store(acc_ptr + out * D + rd, acc)


@triton.jit
def _attn_combine(m_ptr, l_ptr, acc_ptr, o_ptr, bh, NSPLIT, D: tl.constexpr, SPLITS: tl.constexpr):
    """o of head bh from its NSPLIT partials (read through L2: other programs wrote them)."""
    rj = tl.arange(0, SPLITS)
    rd = tl.arange(0, D)
    jm = rj < NSPLIT
    m = tl.load(m_ptr + bh * NSPLIT + rj, mask=jm, other=float("-inf"), cache_modifier=".cg")
    l = tl.load(l_ptr + bh * NSPLIT + rj, mask=jm, other=0.0, cache_modifier=".cg")
    acc = tl.load(acc_ptr + (bh * NSPLIT + rj[:, None]) * D + rd[None, :], mask=jm[:, None], other=0.0,
                  cache_modifier=".cg")
    big = tl.max(m, axis=0)  # finite: the current position is always attended
    w = tl.where(m == float("-inf"), 0.0, tl.exp(m - big))
    o = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(o_ptr + bh * D + rd, o.to(o_ptr.dtype.element_ty))


@triton.jit
def _decode_attn_split_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, S, H, G, scale,
                              sq_b, sq_h, sk_b, sk_h, sk_s, sm_b, NSPLIT,
                              D: tl.constexpr, CHUNK: tl.constexpr, USE_PDL: tl.constexpr,
                              NEWEST_AFTER_WAIT: tl.constexpr):
    _attn_chunk(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, tl.program_id(0), tl.program_id(1), S, H, G,
                scale, sq_b, sq_h, sk_b, sk_h, sk_s, sm_b, NSPLIT, D, CHUNK, USE_PDL, NEWEST_AFTER_WAIT)


@triton.jit
def _decode_attn_combine_kernel(m_ptr, l_ptr, acc_ptr, o_ptr, NSPLIT, D: tl.constexpr, SPLITS: tl.constexpr,
                                USE_PDL: tl.constexpr):
    if USE_PDL != 0:
        gdc_wait()
        gdc_launch_dependents()
    _attn_combine(m_ptr, l_ptr, acc_ptr, o_ptr, tl.program_id(0), NSPLIT, D, SPLITS)


@triton.jit
def _gqa_first_chunk(q_ptr, k_ptr, v_ptr, mask_ptr, j, S, H, G, sq_b, sq_h, sk_b, sk_h, sk_s, sm_b,
                     D: tl.constexpr, CHUNK: tl.constexpr, QP: tl.constexpr, USE_PDL: tl.constexpr,
                     NEWEST_AFTER_WAIT: tl.constexpr):
    """Program (b * Hkv + KV head hk, .) of a tensor-core kernel: (b, hk, its query heads h (QP,), their q (QP, D)
    loaded after the PDL wait, and chunk j's attended ok (CHUNK,), K and V (CHUNK, D) loaded before it)."""
    Hkv = H // G
    b = tl.program_id(0) // Hkv
    hk = tl.program_id(0) % Hkv
    rd = tl.arange(0, D)
    rg = tl.arange(0, QP)
    ok, k, v = _chunk_kv(k_ptr, v_ptr, mask_ptr, b, hk, j, S, sk_b, sk_h, sk_s, sm_b, D, CHUNK, USE_PDL,
                         NEWEST_AFTER_WAIT)
    h = hk * G + rg  # (QP,) the query heads; rows g >= G masked
    q = tl.load(q_ptr + b * sq_b + h[:, None] * sq_h + rd[None, :], mask=(rg < G)[:, None], other=0.0)
    return b, hk, h, q, ok, k, v


@triton.jit
def _gqa_partials(m_ptr, l_ptr, acc_ptr, b, h, j, H, G, NSPLIT, m, l, acc, D: tl.constexpr, QP: tl.constexpr):
    """The partials (m, l (QP,), acc (QP, D)) of split j of row b's query heads h; rows g >= G not stored."""
    rd = tl.arange(0, D)
    real = tl.arange(0, QP) < G
    out = (b * H + h) * NSPLIT + j
    tl.store(m_ptr + out, m, mask=real)
    tl.store(l_ptr + out, l, mask=real)
    tl.store(acc_ptr + out[:, None] * D + rd[None, :], acc, mask=real[:, None])


@triton.jit
def _decode_attn_split_gqa_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, S, H, G, scale,
                                  sq_b, sq_h, sk_b, sk_h, sk_s, sm_b, NSPLIT, D: tl.constexpr, CHUNK: tl.constexpr,
                                  QP: tl.constexpr, USE_PDL: tl.constexpr, NEWEST_AFTER_WAIT: tl.constexpr,
                                  PRECISION: tl.constexpr):
    """_decode_attn_split_kernel for grouped-query attention on the tensor cores: program (b * Hkv + kv head, j)
    takes the G query heads sharing that KV head as the rows of a (QP, D) tile (QP >= 16 >= G, the rows past G
    zero), so the chunk's K and V are read once for all of them: scores (QP, CHUNK) = q K^T, then the
    unnormalized output (QP, D) = p V with p rounded to the cache dtype (fp32 sums; fp32 models: PRECISION
    "ieee", not TF32)."""
    j = tl.program_id(1)
    b, hk, h, q, ok, k, v = _gqa_first_chunk(q_ptr, k_ptr, v_ptr, mask_ptr, j, S, H, G, sq_b, sq_h, sk_b, sk_h,
                                             sk_s, sm_b, D, CHUNK, QP, USE_PDL, NEWEST_AFTER_WAIT)
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # (QP, CHUNK) fp32
    scores = tl.where(ok[None, :], scores, float("-inf"))
    m = tl.max(scores, axis=1)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    p = tl.exp(scores - m_safe[:, None])
    l = tl.sum(p, axis=1)
    acc = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)  # (QP, D) fp32
    if USE_PDL != 0:
        gdc_launch_dependents()
    _gqa_partials(m_ptr, l_ptr, acc_ptr, b, h, j, H, G, NSPLIT, m, l, acc, D, QP)


@triton.jit
def _gqa_online(q, ok, k, v, m_i, l_i, acc, scale, PRECISION: tl.constexpr):
    """One (CHUNK, D) tile of K and V into the running softmax of the query heads q (QP, D): the max m_i and sum
    l_i (QP,) and the unnormalized output acc (QP, D), all fp32; slots not ok weigh nothing."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # (QP, CHUNK) fp32
    s = tl.where(ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)  # 0 while m_i is -inf
    p = tl.exp(s - m_safe[:, None])
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return m_new, l_i * alpha + tl.sum(p, axis=1), acc


@triton.jit
def _decode_attn_span_gqa_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, S, H, G, scale,
                                 sq_b, sq_h, sk_b, sk_h, sk_s, sm_b, NSPLIT, SPAN, D: tl.constexpr,
                                 CHUNK: tl.constexpr, QP: tl.constexpr, USE_PDL: tl.constexpr,
                                 NEWEST_AFTER_WAIT: tl.constexpr, PRECISION: tl.constexpr, STAGES: tl.constexpr):
    """_decode_attn_split_gqa_kernel over a span of SPAN slots (a multiple of CHUNK) a program instead of one
    chunk: an online softmax over the span's CHUNK-slot tiles in a pipelined loop (STAGES), so a batch's
    programs are about a wave whatever the cache length (span_splits) and the combine reads fewer partials.
    The first tile is loaded before the PDL wait (as the one-chunk kernel loads its chunk), the rest after. A
    multi-head model runs it with G = 1 (one real row of the QP)."""
    j = tl.program_id(1)
    lo = j * SPAN
    b, hk, h, q, ok, k, v = _gqa_first_chunk(q_ptr, k_ptr, v_ptr, mask_ptr, lo // CHUNK, S, H, G, sq_b, sq_h, sk_b,
                                             sk_h, sk_s, sm_b, D, CHUNK, QP, USE_PDL, NEWEST_AFTER_WAIT)
    m_i, l_i, acc = _gqa_online(q, ok, k, v, tl.full((QP,), float("-inf"), tl.float32),
                                tl.zeros((QP,), tl.float32), tl.zeros((QP, D), tl.float32), scale, PRECISION)
    end = tl.minimum(lo + SPAN, S)
    kv = b * sk_b + hk * sk_h
    rd = tl.arange(0, D)
    for t0 in tl.range(lo + CHUNK, end, CHUNK, num_stages=STAGES):  # loaded after the wait: nothing stale
        rs = t0 + tl.arange(0, CHUNK)
        ok = tl.load(mask_ptr + b * sm_b + rs, mask=rs < end, other=0) != 0
        off = kv + rs[:, None] * sk_s + rd[None, :]
        k = tl.load(k_ptr + off, mask=ok[:, None], other=0.0)  # masked slots are never read
        v = tl.load(v_ptr + off, mask=ok[:, None], other=0.0)
        m_i, l_i, acc = _gqa_online(q, ok, k, v, m_i, l_i, acc, scale, PRECISION)
    if USE_PDL != 0:
        gdc_launch_dependents()
    _gqa_partials(m_ptr, l_ptr, acc_ptr, b, h, j, H, G, NSPLIT, m_i, l_i, acc, D, QP)


@triton.jit
def _decode_attn_one_launch_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, cnt_ptr, o_ptr, S, H, G,
                                   scale, sq_b, sq_h, sk_b, sk_h, sk_s, sm_b, NSPLIT,
                                   D: tl.constexpr, CHUNK: tl.constexpr, SPLITS: tl.constexpr,
                                   USE_PDL: tl.constexpr, NEWEST_AFTER_WAIT: tl.constexpr):
    bh = tl.program_id(0)
    _attn_chunk(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, bh, tl.program_id(1), S, H, G, scale,
                sq_b, sq_h, sk_b, sk_h, sk_s, sm_b, NSPLIT, D, CHUNK, USE_PDL, NEWEST_AFTER_WAIT)
    arrived = tl.atomic_add(cnt_ptr + bh, 1)  # acq_rel: this chunk's partials are visible before the count
    if arrived == NSPLIT - 1:  # the last chunk of this head to finish combines them all
        _attn_combine(m_ptr, l_ptr, acc_ptr, o_ptr, bh, NSPLIT, D, SPLITS)
        tl.atomic_xchg(cnt_ptr + bh, 0)  # zero again for the next call (and the next graph replay)


def _attn_config(S: int, D: int, H: int, Hkv: int, B: int = 1, sms: int | None = None) -> tuple[int, int]:
    """(slots per program, warps): an eager launch's overridden config (configs.CONFIG_OVERRIDE: scripts/attn_bench.py's
    trials), else at batch 1 its pinned one, else torch.compile's, which batches above 1 take eagerly as well (the
    pin and the tuning are the batch-1 step's; at Llama-7B batch 8 the compiled 64 / 2 was the fastest of
    attn_bench.py's grid, docs/PERF.md), except the tensor-core GQA form's eager launch (batched_eager_config,
    at sms streaming multiprocessors). A tuned config is timed at this launch's heads (configs.attention_form).
    The span form's (span_config) slots per program are its tile's."""
    if B == 1:
        cfg = pinned_config("attention", S, D, attention_form(H, Hkv))
        return (cfg["CHUNK"], cfg["num_warps"]) if cfg is not None else (ATTN_CHUNK, ATTN_COMPILED_WARPS)
    if torch.compiler.is_compiling():
        return ATTN_CHUNK, ATTN_COMPILED_WARPS
    if sms is None:
        raise ValueError("an eager attention launch above batch 1 needs the GPU's SM count")
    cfg = configs.overridden("attention", S, D) or batched_eager_config(S, D, H, Hkv, B, sms)
    return cfg["CHUNK"], cfg["num_warps"]


def batched_eager_config(S: int, D: int, H: int, Hkv: int, B: int, sms: int) -> dict:
    """The config of an eager launch above batch 1 without an override, on a GPU of sms streaming multiprocessors:
    for the tensor-core GQA form its span form (configs.ATTN_GQA_SPAN_CONFIG) where that gives each program at
    least ATTN_SPAN_MIN_TILES tiles, else its one-chunk launch (ATTN_GQA_EAGER_CONFIG); else torch.compile's. Also
    scripts/attn_bench.py's "pinned" split row."""
    if Hkv < H and _gqa_dot(S, D, H, Hkv):
        span = configs.ATTN_GQA_SPAN_CONFIG
        _, slots = span_splits(B * Hkv, S, sms, span["WAVES"], span["CHUNK"])
        return dict(span if slots >= configs.ATTN_SPAN_MIN_TILES * span["CHUNK"] else configs.ATTN_GQA_EAGER_CONFIG)
    return {"CHUNK": ATTN_CHUNK, "num_warps": ATTN_COMPILED_WARPS}


def span_config(S: int, D: int, H: int, Hkv: int, B: int, sms: int) -> tuple[float, int] | None:
    """(WAVES, STAGES) where the launch takes the span form of the tensor-core GQA kernel
    (_decode_attn_span_gqa_kernel): an eager launch above batch 1 whose config (the override, else
    batched_eager_config) has a WAVES key; else None (the one-chunk kernels). A multi-head model takes it as
    groups of one query head (only by an override: scripts/perf_lab.py's trials); a GQA model only in its
    tensor-core form (GQA_DOT)."""
    if B == 1 or torch.compiler.is_compiling() or (Hkv < H and not _gqa_dot(S, D, H, Hkv)):
        return None
    cfg = configs.overridden("attention", S, D) or batched_eager_config(S, D, H, Hkv, B, sms)
    return (cfg["WAVES"], cfg["STAGES"]) if "WAVES" in cfg else None


def span_splits(rows: int, S: int, sms: int, waves: float, chunk: int) -> tuple[int, int]:
    """(spans a row, slots a span) of the span form: about waves x sms programs over rows (batch x KV heads),
    each span a whole number of chunk-slot tiles, none empty."""
    want = max(1, min(triton.cdiv(S, chunk), round(waves * sms / rows)))
    span = triton.cdiv(triton.cdiv(S, want), chunk) * chunk
    return triton.cdiv(S, span), span


def _attn_pdl(q: torch.Tensor, pdl: int) -> int:
    """The attention's PDL mode: off or PDL_TRIGGER_LATE. Its early trigger (the next kernel launching right
    after the wait) cost 6 % of the decode step (docs/PERF.md, tried and rejected) and was removed."""
    if pdl == PDL_TRIGGER_EARLY:
        raise ValueError("decode attention launches with PDL_OFF or PDL_TRIGGER_LATE, not PDL_TRIGGER_EARLY")
    return use_pdl(q, pdl)


def _chunk_launch_kwargs(pdl: int) -> dict:
    """The launch options of a chunk kernel for pdl (a use_pdl result): with PDL, launch_pdl and the register cap
    (configs.ATTN_PDL_MAXNREG: 3 programs per SM instead of 2)."""
    return {**launch_kwargs(pdl), "maxnreg": ATTN_PDL_MAXNREG} if pdl else {}


def _attn_buffers(q, S, chunk, nsplit=None):
    B, H, _, D = q.shape
    nsplit = nsplit or triton.cdiv(S, chunk)
    m = torch.empty((B * H * nsplit,), device=q.device, dtype=torch.float32)
    acc = torch.empty((B * H * nsplit, D), device=q.device, dtype=torch.float32)
    o = torch.empty((B, H, 1, D), device=q.device, dtype=q.dtype)
    return nsplit, m, torch.empty_like(m), acc, o


@triton_op("llama_fast::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     scale: float, pdl: int = PDL_OFF) -> torch.Tensor:
    """One query per row: q (B, H, 1, D), k/v cache (B, Hkv, S, D), mask (B, S) bool -> (B, H, 1, D).
    pdl: PDL_OFF or PDL_TRIGGER_LATE, applied where it can be (pdl.use_pdl). With PDL, only the newest
    attended slot of each row may be written by the kernel before (the step's)."""
    pdl = _attn_pdl(q, pdl)
    kernel, grid, args, kwargs, (m, l, acc, o) = split_call(q, k, v, mask, scale, pdl)
    nsplit = grid[1]
    wrap_triton(kernel)[grid](*args, **kwargs)
    wrap_triton(_decode_attn_combine_kernel)[(q.shape[0] * q.shape[1],)](m, l, acc, o, nsplit, D=kwargs["D"],
                                                           SPLITS=triton.next_power_of_2(nsplit), USE_PDL=pdl,
                                                           **launch_kwargs(pdl))
    return o


def split_call(q, k, v, mask, scale: float, pdl: int) -> tuple:
    """(kernel, grid, arguments, keywords, (m, l, acc, o)) of decode_attention's chunk-kernel launch, pdl already
    decided (a use_pdl result): _decode_attn_split_kernel, or for a GQA model with GQA_DOT
    _decode_attn_split_gqa_kernel, or its span form where span_config says so. Also what scripts/sass_probe.py
    compiles offline."""
    B, H, _, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    sms = sm_count(q.device)
    chunk, warps = _attn_config(S, D, H, Hkv, B, sms)
    span = span_config(S, D, H, Hkv, B, sms)
    nsplit, slots = span_splits(B * Hkv, S, sms, span[0], chunk) if span else (None, None)
    nsplit, m, l, acc, o = _attn_buffers(q, S, chunk, nsplit)
    args = (q, k, v, mask, m, l, acc, S, H, H // Hkv, scale, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            k.stride(2), mask.stride(0), nsplit)
    kwargs = dict(D=D, CHUNK=chunk, USE_PDL=pdl, NEWEST_AFTER_WAIT=pdl != 0, num_warps=warps,
                  **_chunk_launch_kwargs(pdl))
    # a program per KV head and chunk (or span of chunks), its query heads on the tensor cores
    gqa = {**kwargs, "QP": max(16, triton.next_power_of_2(H // Hkv)),
           "PRECISION": "ieee" if q.dtype == torch.float32 else "tf32"}
    if span is not None:
        return (_decode_attn_span_gqa_kernel, (B * Hkv, nsplit), (*args, slots), {**gqa, "STAGES": span[1]},
                (m, l, acc, o))
    if Hkv < H and _gqa_dot(S, D, H, Hkv):
        return _decode_attn_split_gqa_kernel, (B * Hkv, nsplit), args, gqa, (m, l, acc, o)
    return _decode_attn_split_kernel, (B * H, nsplit), args, kwargs, (m, l, acc, o)


def _gqa_dot(S: int, D: int, H: int, Hkv: int) -> bool:
    """Whether the two-kernel form of a GQA model takes _decode_attn_split_gqa_kernel: the "attention" config's
    GQA_DOT key where the launch's config has it (pinned_config: CONFIG_OVERRIDE's, e.g. scripts/attn_bench.py),
    else configs.ATTN_GQA_DOT (also inside torch.compile, where the chunk and warps are the compiled ones)."""
    cfg = pinned_config("attention", S, D, attention_form(H, Hkv))
    return bool(cfg["GQA_DOT"]) if cfg and "GQA_DOT" in cfg else configs.ATTN_GQA_DOT


@triton_op("llama_fast::decode_attention_one_launch", mutates_args={"counters"})
def decode_attention_one_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                                scale: float, counters: torch.Tensor, pdl: int = PDL_OFF) -> torch.Tensor:
    """decode_attention in one kernel: counters (B*H,) int32, zero before the call and left zero after."""
    grid, args, kwargs, o = one_launch_call(q, k, v, mask, scale, counters, _attn_pdl(q, pdl))
    wrap_triton(_decode_attn_one_launch_kernel)[grid](*args, **kwargs)
    return o


def one_launch_call(q, k, v, mask, scale: float, counters, pdl: int) -> tuple[tuple, tuple, dict, torch.Tensor]:
    """(grid, arguments, keywords, output) of decode_attention_one_launch's kernel launch, pdl already decided (a
    use_pdl result). Also what scripts/sass_probe.py compiles offline."""
    B, H, _, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    chunk, warps = _attn_config(S, D, H, Hkv)
    nsplit, m, l, acc, o = _attn_buffers(q, S, chunk)
    args = (q, k, v, mask, m, l, acc, counters, o, S, H, H // Hkv, scale, q.stride(0), q.stride(1), k.stride(0),
            k.stride(1), k.stride(2), mask.stride(0), nsplit)
    kwargs = dict(D=D, CHUNK=chunk, SPLITS=triton.next_power_of_2(nsplit), USE_PDL=pdl, NEWEST_AFTER_WAIT=pdl != 0,
                  num_warps=warps, **_chunk_launch_kwargs(pdl))
    return (B * H, nsplit), args, kwargs, o
