"""The sampled pick on the device without a sort: temperature, top-k, top-p and the Gumbel-max draw in a fixed
number of launches per (B, V), with llama_fast/sampling.py's semantics and noise.

Every launch splits each row's vocabulary over NB = cdiv(V, CHUNK) programs (CHUNK = 2048: 16 programs per row
at a 32k vocabulary, 64 at 128k), so a row is never read by one SM alone; each program reads its CHUNK logits
once per launch (8 KB in fp32, from L2 after the first launch).

  temperature only  _draw_kernel (counter-hash noise in registers, Gumbel transform, the argmax of
                    logits / T + gumbel over the block) + _combine_kernel (the row's first maximum): 2 launches.
  top-k             the k-th largest logit by a radix select over the logits' 32-bit order-preserving keys:
                    ROUNDS = 8 launches of _round_kernel, each a 16-bin count histogram of the next 4 bits among
                    the tokens whose higher bits match the prefix decided so far. Each program of the next
                    launch reads the row's NB histograms (NB x 16 counts) and decides the next digit itself,
                    so no combine launches are needed. Then the draw and the combine: 10 launches.
  top-p             the same radix walk with probability-mass histograms (exp(s - row max), online per block
                    in the first launch, which also gives the softmax denominator Z over the top-k set): the
                    boundary key is the lowest key whose mass strictly above it is still below p * Z.
                    10 launches; 18 with top-k before it.

Cost estimate (not a measurement): a launch moves ~8 KB and does ~16 compare-selects per logit per program,
under a microsecond of work; in the step's CUDA graph each launch costs about its launch gap, ~1.5-3 us. That
puts temperature-only near 5 us, top-k or top-p near 30 us and both near 55 us per step at B = 1 and a 128k
vocabulary, against a ~3.8 ms Llama-7B step on an H200 (3 % = ~110 us). docs/PERF.md holds the measurements.

Semantics (transformers' order, llama_fast.sampling.sample's ties), with x the raw logit and s = x / T:
  - order: x descending, then token id ascending (the torch path's stable descending sort). -0.0 == +0.0.
  - top-k keeps every token with x above the k-th largest x_k, and of the tokens equal to x_k the ones with the
    lowest ids, k in all. top_k=1 is the greedy argmax (its first maximum) at any temperature.
  - top-p keeps, among the top-k tokens, a token while the mass ranked strictly before it (in that order) is
    below p: the tokens above the boundary key v*, and of the tokens equal to v* those whose tie rank j (by id)
    has A + j * q* < p * Z (A: mass above v*, q*: one tied token's mass, unnormalized fp32). The torch path
    compares a cumsum of normalized probabilities with p instead: the two can differ only where the mass
    before a token lies within fp32 rounding of p.
  - the token is the first maximum (by id) of s + gumbel over the kept tokens; the torch path takes the first
    in its sorted order, so they differ only where two kept tokens' scores are exactly equal.
  - the noise is sampling.uniform_noise's integer hash bit for bit (int64 arithmetic on values < 2**32, as the
    torch version); its float Gumbel transform, -log(-log(u)), may round an ulp apart on another backend.

Everything is graph-capturable: no host sync, a grid fixed by (B, V), workspace sized by (B, V) only.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

CHUNK = 2048  # tokens per program
BLOCK = 256  # tokens per tile inside a program
RADIX = 4  # key bits decided per launch (16-bin histograms)
ROUNDS = 32 // RADIX


@triton.jit
def _mix(x):
    """sampling._mix: the same 32-bit hash in int64 (values < 2**32; the multiplier < 2**27 never overflows)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    return (x >> 16) ^ x


@triton.jit
def _stream_key(ints_ptr, pos_ptr):
    """sampling.uniform_noise's key: one stream per (seed, position)."""
    seed = tl.load(ints_ptr + 1).to(tl.int64) & 0xFFFFFFFF
    pos = tl.load(pos_ptr).to(tl.int64)
    return _mix((_mix(seed) + pos) & 0xFFFFFFFF)


@triton.jit
def _uniform(key, row, offs, V):
    """sampling.uniform_noise at (row, token ids offs): fp32 in (0, 1), 23 bits + 0.5."""
    ids = (row.to(tl.int64) * V + offs.to(tl.int64)) & 0xFFFFFFFF
    h = _mix((_mix(ids ^ key) + key) & 0xFFFFFFFF)
    return ((h >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)


@triton.jit
def _ukey(x):
    """fp32 -> int64 in [0, 2**32) with the order of the values (-0.0 and +0.0 one key)."""
    bits = x.to(tl.int32, bitcast=True)
    skey = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    skey = tl.where(x == 0.0, 0, skey)
    return skey.to(tl.int64) + 1073741824 + 1073741824


@triton.jit
def _row_stats(ref_ptr, z_ptr, row, NB, NBP: tl.constexpr):
    """(M, Z): the row's largest scaled logit and the softmax denominator over the top-k set, from the first
    mass launch's per-block maxima and sums (round 0's ref slice)."""
    rb = tl.arange(0, NBP)
    bm = rb < NB
    ref = tl.load(ref_ptr + row * NB + rb, mask=bm, other=float("-inf"))
    big = tl.max(ref, axis=0)
    z = tl.load(z_ptr + row * NB + rb, mask=bm, other=0.0)
    return big, tl.sum(tl.where(bm, z * tl.exp(ref - big), 0.0), axis=0)


@triton.jit
def _decide(cnt_ptr, mass_ptr, ref_ptr, st_i_ptr, st_f_ptr, row, r, B, NB, M, pz, MASS: tl.constexpr,
            NBP: tl.constexpr):
    """The state after round r's digit: (prefix, rem, above) from round r's state and the row's NB histograms.
    count (top-k): the highest digit whose tokens at or above it reach rem, rem less the tokens above it.
    mass (top-p): the lowest non-empty digit whose mass strictly above it, plus above, is below pz."""
    base = (r * B + row) * NB
    rb = tl.arange(0, NBP)
    bm = rb < NB
    rd = tl.arange(0, 16)
    cnt = tl.sum(tl.load(cnt_ptr + (base + rb)[:, None] * 16 + rd[None, :], mask=bm[:, None], other=0), axis=0)
    prefix = tl.load(st_i_ptr + (r * B + row) * 2)
    rem = tl.load(st_i_ptr + (r * B + row) * 2 + 1)
    above = tl.load(st_f_ptr + r * B + row)
    if MASS:
        ref = tl.load(ref_ptr + base + rb, mask=bm, other=float("-inf"))
        h = tl.load(mass_ptr + (base + rb)[:, None] * 16 + rd[None, :], mask=bm[:, None], other=0.0)
        mass = tl.sum(h * tl.exp(ref - M)[:, None], axis=0)
        above_d = above + tl.sum(tl.where(rd[None, :] > rd[:, None], mass[None, :], 0.0), axis=1)
        d = tl.min(tl.where((cnt > 0) & (above_d < pz), rd, 16), axis=0)
        above = tl.sum(tl.where(rd == d, above_d, 0.0), axis=0)
    else:
        incl = tl.sum(tl.where(rd[None, :] >= rd[:, None], cnt[None, :], 0), axis=1).to(tl.int64)
        d = tl.max(tl.where(incl >= rem, rd, -1), axis=0)
        rem = rem - tl.sum(tl.where(rd == d, incl - cnt.to(tl.int64), 0), axis=0)
    return prefix * 16 + d, rem, above


@triton.jit
def _ties_before(cnt_ptr, r, row, B, NB, blk, key, NBP: tl.constexpr):
    """Tokens equal to the final key in the blocks before blk (the last round's bin of its last digit)."""
    rb = tl.arange(0, NBP)
    c = tl.load(cnt_ptr + ((r * B + row) * NB + rb) * 16 + (key & 15), mask=rb < blk, other=0)
    return tl.sum(c, axis=0).to(tl.int64)


@triton.jit
def _top_k_keep(key, valid, kth, need, seen):
    """Kept by top-k: above the k-th key, or equal to it among the first `need` ties by id (seen: ties before
    this tile). -> (kept, seen after this tile)."""
    tie = valid & (key == kth)
    t = tie.to(tl.int64)
    rank = seen + tl.cumsum(t, axis=0) - t
    return valid & ((key > kth) | (tie & (rank < need))), seen + tl.sum(t, axis=0)


@triton.jit
def _round_kernel(x_ptr, sx, floats_ptr, ints_ptr, cnt_ptr, mass_ptr, ref_ptr, z_ptr, st_i_ptr, st_f_ptr,
                  kcnt_ptr, kst_ptr, V, B, NB, rnd, ROUNDS: tl.constexpr, MASS: tl.constexpr,
                  TOPK: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, NBP: tl.constexpr):
    """One radix round: decide the previous round's digit (every program of the row alike), then the 16-bin
    count (and mass) histogram of digit rnd among this block's tokens in the decided bucket."""
    row = tl.program_id(0)
    blk = tl.program_id(1)
    temperature = tl.load(floats_ptr)
    rd = tl.arange(0, 16)
    big = tl.full((), float("-inf"), tl.float32)
    pz = tl.zeros((), tl.float32)
    if MASS:
        if rnd > 0:
            big, z = _row_stats(ref_ptr, z_ptr, row, NB, NBP)
            pz = tl.load(floats_ptr + 1) * z
    if rnd > 0:
        prefix, rem, above = _decide(cnt_ptr, mass_ptr, ref_ptr, st_i_ptr, st_f_ptr, row, rnd - 1, B, NB, big,
                                     pz, MASS, NBP)
    else:
        prefix = tl.zeros((), tl.int64)
        rem = tl.load(ints_ptr).to(tl.int64)
        above = tl.zeros((), tl.float32)
    if blk == 0:
        tl.store(st_i_ptr + (rnd * B + row) * 2, prefix)
        tl.store(st_i_ptr + (rnd * B + row) * 2 + 1, rem)
        tl.store(st_f_ptr + rnd * B + row, above)
    kth = tl.zeros((), tl.int64)
    need = tl.zeros((), tl.int64)
    seen = tl.zeros((), tl.int64)
    if TOPK:
        kth, need, _ = _decide(kcnt_ptr, mass_ptr, ref_ptr, kst_ptr, st_f_ptr, row, ROUNDS - 1, B, NB, big, pz,
                               False, NBP)
        seen = _ties_before(kcnt_ptr, ROUNDS - 1, row, B, NB, blk, kth, NBP)
    hi = 32 - 4 * rnd
    lo = 28 - 4 * rnd
    cnt = tl.zeros((16,), tl.int32)
    mass = tl.zeros((16,), tl.float32)
    m_run = big
    z_run = tl.zeros((), tl.float32)
    for t in range(0, CHUNK, BLOCK):
        offs = blk * CHUNK + t + tl.arange(0, BLOCK)
        valid = offs < V
        x = tl.load(x_ptr + row * sx + offs, mask=valid, other=float("-inf")).to(tl.float32)
        key = _ukey(x)
        kept = valid
        if TOPK:
            kept, seen = _top_k_keep(key, valid, kth, need, seen)
        hit = (kept & ((key >> hi) == prefix))[:, None] & (((key >> lo) & 15)[:, None] == rd[None, :])
        cnt += tl.sum(hit.to(tl.int32), axis=0)
        if MASS:
            s = x / temperature
            m_new = tl.maximum(m_run, tl.max(s, axis=0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            scale = tl.exp(m_run - m_safe)
            w = tl.where(kept, tl.exp(s - m_safe), 0.0)
            mass = mass * scale + tl.sum(tl.where(hit, w[:, None], 0.0), axis=0)
            z_run = z_run * scale + tl.sum(w, axis=0)
            m_run = m_new
    out = (rnd * B + row) * NB + blk
    tl.store(cnt_ptr + out * 16 + rd, cnt)
    if MASS:
        tl.store(mass_ptr + out * 16 + rd, mass)
        tl.store(ref_ptr + out, m_run)
        if rnd == 0:
            tl.store(z_ptr + row * NB + blk, z_run)


@triton.jit
def _draw_kernel(x_ptr, sx, floats_ptr, ints_ptr, pos_ptr, kcnt_ptr, kst_ptr, pcnt_ptr, pmass_ptr, ref_ptr, z_ptr,
                 pst_i_ptr, pst_f_ptr, score_ptr, id_ptr, keep_ptr, V, B, NB, ROUNDS: tl.constexpr,
                 TOPK: tl.constexpr, TOPP: tl.constexpr, WRITE_KEEP: tl.constexpr, CHUNK: tl.constexpr,
                 BLOCK: tl.constexpr, NBP: tl.constexpr):
    """The kept tokens of this block (the final digits decided here), their noise, and the block's first
    maximum of s + gumbel -> (score, id) partials. WRITE_KEEP also stores the keep mask (B, V) int8."""
    row = tl.program_id(0)
    blk = tl.program_id(1)
    temperature = tl.load(floats_ptr)
    stream = _stream_key(ints_ptr, pos_ptr)
    big = tl.full((), float("-inf"), tl.float32)
    pz = tl.zeros((), tl.float32)
    kth = tl.zeros((), tl.int64)
    need = tl.zeros((), tl.int64)
    seen_k = tl.zeros((), tl.int64)
    if TOPK:
        kth, need, _ = _decide(kcnt_ptr, pmass_ptr, ref_ptr, kst_ptr, pst_f_ptr, row, ROUNDS - 1, B, NB, big, pz,
                               False, NBP)
        seen_k = _ties_before(kcnt_ptr, ROUNDS - 1, row, B, NB, blk, kth, NBP)
    vp = tl.zeros((), tl.int64)
    above = tl.zeros((), tl.float32)
    seen_p = tl.zeros((), tl.int64)
    if TOPP:
        big, z = _row_stats(ref_ptr, z_ptr, row, NB, NBP)
        pz = tl.load(floats_ptr + 1) * z
        vp, _, above = _decide(pcnt_ptr, pmass_ptr, ref_ptr, pst_i_ptr, pst_f_ptr, row, ROUNDS - 1, B, NB, big, pz,
                               True, NBP)
        seen_p = _ties_before(pcnt_ptr, ROUNDS - 1, row, B, NB, blk, vp, NBP)
    best = tl.full((), float("-inf"), tl.float32)
    best_id = tl.zeros((), tl.int32) + V
    for t in range(0, CHUNK, BLOCK):
        offs = blk * CHUNK + t + tl.arange(0, BLOCK)
        valid = offs < V
        x = tl.load(x_ptr + row * sx + offs, mask=valid, other=float("-inf")).to(tl.float32)
        s = x / temperature
        kept = valid
        if TOPK or TOPP:
            key = _ukey(x)
            if TOPK:
                kept, seen_k = _top_k_keep(key, valid, kth, need, seen_k)
            if TOPP:
                tie = kept & (key == vp)
                ti = tie.to(tl.int64)
                rank = (seen_p + tl.cumsum(ti, axis=0) - ti).to(tl.float32)
                in_mass = above + rank * tl.exp(s - big) < pz
                kept = kept & ((key > vp) | (tie & in_mass))
                seen_p += tl.sum(ti, axis=0)
        gumbel = -tl.log(-tl.log(_uniform(stream, row, offs, V)))
        score = tl.where(kept, s + gumbel, float("-inf"))
        if WRITE_KEEP:
            tl.store(keep_ptr + row * V + offs, kept.to(tl.int8), mask=valid)
        top = tl.max(score, axis=0)
        top_id = tl.min(tl.where(score == top, offs, V), axis=0)
        better = top > best
        best_id = tl.where(better, top_id, best_id)
        best = tl.where(better, top, best)
    tl.store(score_ptr + row * NB + blk, best)
    tl.store(id_ptr + row * NB + blk, best_id)


@triton.jit
def _combine_kernel(score_ptr, id_ptr, tok_ptr, NB, V, NBP: tl.constexpr):
    """The row's token: the highest block score, the lowest id among equal scores."""
    row = tl.program_id(0)
    rb = tl.arange(0, NBP)
    bm = rb < NB
    score = tl.load(score_ptr + row * NB + rb, mask=bm, other=float("-inf"))
    ids = tl.load(id_ptr + row * NB + rb, mask=bm, other=V)
    top = tl.max(score, axis=0)
    tl.store(tok_ptr + row, tl.min(tl.where(score == top, ids, V), axis=0).to(tl.int64))


@triton.jit
def _noise_kernel(ints_ptr, pos_ptr, out_ptr, V, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    u = _uniform(_stream_key(ints_ptr, pos_ptr), row, offs, V)
    tl.store(out_ptr + row * V + offs, u, mask=offs < V)


def uniform_noise(ints: torch.Tensor, position: torch.Tensor, rows: int, vocab: int) -> torch.Tensor:
    """The draw's noise as the kernels compute it, (rows, vocab) fp32: sampling.uniform_noise(ints[1:2], ...)
    bit for bit. ints: a SamplerState's (2,) [top_k, seed]; position (1,)."""
    out = torch.empty(rows, vocab, dtype=torch.float32, device=position.device)
    wrap_triton(_noise_kernel)[(rows, triton.cdiv(vocab, BLOCK))](ints, position, out, vocab, BLOCK=BLOCK)
    return out


def pick(logits: torch.Tensor, floats: torch.Tensor, ints: torch.Tensor, position: torch.Tensor, use_top_k: bool,
         use_top_p: bool, chunk: int = CHUNK, keep_out: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of logits (B, V) (any float dtype) -> (B,) int64; floats, ints, use_*: a
    SamplerState's. chunk: tokens per program (a power of 2). keep_out (B, V) int8, if given, receives the
    filters' keep mask."""
    B, V = logits.shape
    x = logits if logits.stride(1) == 1 else logits.contiguous()
    chunk = min(chunk, triton.next_power_of_2(V))
    block = min(BLOCK, chunk)
    nb = triton.cdiv(V, chunk)
    nbp = triton.next_power_of_2(nb)
    f32, dev = torch.float32, x.device
    cnt = torch.empty((2, ROUNDS, B, nb, 16), dtype=torch.int32, device=dev)  # [0] top-k, [1] top-p
    mass = torch.empty((ROUNDS, B, nb, 16), dtype=f32, device=dev)
    ref = torch.empty((ROUNDS, B, nb), dtype=f32, device=dev)
    z = torch.empty((B, nb), dtype=f32, device=dev)
    st_i = torch.empty((2, ROUNDS, B, 2), dtype=torch.int64, device=dev)  # (prefix, rem) per filter, round, row
    st_f = torch.empty((2, ROUNDS, B), dtype=f32, device=dev)  # mass above the bucket
    score = torch.empty((B, nb), dtype=f32, device=dev)
    ids = torch.empty((B, nb), dtype=torch.int32, device=dev)
    tok = torch.empty((B,), dtype=torch.int64, device=dev)
    grid = (B, nb)
    meta = dict(ROUNDS=ROUNDS, CHUNK=chunk, BLOCK=block, NBP=nbp)
    if use_top_k:
        for r in range(ROUNDS):
            wrap_triton(_round_kernel)[grid](x, x.stride(0), floats, ints, cnt[0], mass, ref, z, st_i[0], st_f[0],
                                             cnt[0], st_i[0], V, B, nb, r, MASS=False, TOPK=False, **meta)
    if use_top_p:
        for r in range(ROUNDS):
            wrap_triton(_round_kernel)[grid](x, x.stride(0), floats, ints, cnt[1], mass, ref, z, st_i[1], st_f[1],
                                             cnt[0], st_i[0], V, B, nb, r, MASS=True, TOPK=use_top_k, **meta)
    write_keep = keep_out is not None
    wrap_triton(_draw_kernel)[grid](x, x.stride(0), floats, ints, position, cnt[0], st_i[0], cnt[1], mass, ref, z,
                                    st_i[1], st_f[1], score, ids, keep_out if write_keep else ids, V, B, nb,
                                    TOPK=use_top_k, TOPP=use_top_p, WRITE_KEEP=write_keep, **meta)
    wrap_triton(_combine_kernel)[(B,)](score, ids, tok, nb, V, NBP=nbp)
    return tok


@triton_op("llama_fast::sample_pick", mutates_args=())
def sample_pick(logits: torch.Tensor, floats: torch.Tensor, ints: torch.Tensor, position: torch.Tensor,
                use_top_k: bool, use_top_p: bool) -> torch.Tensor:
    """llama_fast.sampling.sample on the device: logits (B, V), a SamplerState's floats / ints / flags, the
    cache position (1,) of the new token -> (B,) int64."""
    return pick(logits, floats, ints, position, use_top_k, use_top_p)
