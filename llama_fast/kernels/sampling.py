"""The sampled pick on the device without a sort: temperature, top-k, top-p and the Gumbel-max draw in a fixed
number of launches per (B, V), with llama_fast/sampling.py's semantics and noise.

Every launch splits each row's vocabulary over NB = cdiv(V, chunk) programs (chunk_for: 256 tokens, 125 programs
a row, at batch 1 and a 32k vocabulary; 1024 at 128k; fewer programs a row as the batch grows), so a row is never
read by one SM alone; each program reads its chunk of logits once per launch (in the model's dtype: the kernels
convert to fp32 as they load, so the step needs no cast).

  temperature only  a zeroed arrival counter (a memset) and _draw_kernel: counter-hash noise in registers, the
                    Gumbel transform, each block's first maximum of logits / T + gumbel; the last program of a
                    row to arrive (an atomic counter) combines the row's blocks. 1 launch and a memset.
  top-k             the k-th largest logit by a radix select over the logits' 32-bit order-preserving keys:
                    ROUNDS = 4 launches of _round_kernel, each a 256-bin count histogram of the next 8 bits
                    among the tokens whose higher bits match the prefix decided so far (two 16-way one-hots
                    and one tl.dot: hist[hi nibble, lo nibble]). Each program of the next launch reads the
                    row's NB histograms and decides the next digit itself, so no combine launches are needed.
                    Then the draw: 5 launches.
  top-p             the same radix walk with probability-mass histograms (exp(s - row max), online per block
                    in the first launch, which also gives the softmax denominator Z over the top-k set; the
                    masses go through the dot split into three tf32-exact parts, so their sums keep fp32
                    precision): the boundary key is the lowest key whose mass strictly above it is still
                    below p * Z. 5 launches; 9 with top-k before it.
The draw can also finish the step (sample_next: generate's sampled branch): the noise at cache slot
input_pos + 1, finished rows emit pad, the done flags gain the rows that drew an EOS id, and with suppress_eos
the EOS ids are never drawn; that would otherwise be five more eager launches in the step's CUDA graph (a cast,
the position add, where, isin, or).

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

Everything is graph-capturable: no host sync, a grid fixed by (B, V), workspace sized by (B, V) only. Sums are
in a fixed order (no float atomics; the one atomic is an integer arrival count), so a result repeats exactly.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

CHUNK = 2048  # tokens per program: the largest chunk_for picks
BLOCK = 256  # tokens per tile inside a program
RADIX = 8  # key bits decided per launch (256-bin histograms)
BINS = 1 << RADIX
ROUNDS = 32 // RADIX
GROUP = 16  # blocks' histograms summed per step of a decision


@triton.jit
def _mix(x):
    """sampling._mix: the same 32-bit hash in int64 (values < 2**32; the multiplier < 2**27 never overflows)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    return (x >> 16) ^ x


@triton.jit
def _stream_key(ints_ptr, pos_ptr, pos_offset):
    """sampling.uniform_noise's key: one stream per (seed, position); the position is pos_ptr's + pos_offset."""
    seed = tl.load(ints_ptr + 1).to(tl.int64) & 0xFFFFFFFF
    pos = tl.load(pos_ptr).to(tl.int64) + pos_offset
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
def _load_x(x_ptr, sx, row, offs, valid, eos_ptr, n_eos, SUPPRESS: tl.constexpr, NEP: tl.constexpr):
    """A tile of row's logits in fp32 (-inf past V); SUPPRESS: the EOS ids -inf too (generate's index_fill)."""
    x = tl.load(x_ptr + row * sx + offs, mask=valid, other=float("-inf")).to(tl.float32)
    if SUPPRESS:
        re = tl.arange(0, NEP)
        eos = tl.load(eos_ptr + re, mask=re < n_eos, other=-1)
        hit = tl.sum((offs.to(tl.int64)[:, None] == eos[None, :]).to(tl.int32), axis=1) > 0
        x = tl.where(hit, float("-inf"), x)
    return x


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
            G: tl.constexpr):
    """The state after round r's digit: (prefix, rem, above) from round r's state and the row's NB histograms.
    count (top-k): the highest digit whose tokens at or above it reach rem, rem less the tokens above it.
    mass (top-p): the lowest non-empty digit whose mass strictly above it, plus above, is below pz."""
    base = (r * B + row) * NB
    rd = tl.arange(0, 256)
    cnt = tl.zeros((256,), tl.int32)
    mass = tl.zeros((256,), tl.float32)
    for b0 in range(0, NB, G):
        rb = b0 + tl.arange(0, G)
        bm = rb < NB
        cnt += tl.sum(tl.load(cnt_ptr + (base + rb)[:, None] * 256 + rd[None, :], mask=bm[:, None], other=0),
                      axis=0)
        if MASS:
            ref = tl.load(ref_ptr + base + rb, mask=bm, other=float("-inf"))
            h = tl.load(mass_ptr + (base + rb)[:, None] * 256 + rd[None, :], mask=bm[:, None], other=0.0)
            mass += tl.sum(tl.where(bm[:, None], h * tl.exp(ref - M)[:, None], 0.0), axis=0)
    prefix = tl.load(st_i_ptr + (r * B + row) * 2)
    rem = tl.load(st_i_ptr + (r * B + row) * 2 + 1)
    above = tl.load(st_f_ptr + r * B + row)
    if MASS:
        # exclusive suffix sums (the mass of the digits above d); exact 0 above the highest non-empty digit
        above_d = above + (tl.cumsum(mass, axis=0, reverse=True) - mass)
        d = tl.min(tl.where((cnt > 0) & (above_d < pz), rd, 256), axis=0)
        above = tl.sum(tl.where(rd == d, above_d, 0.0), axis=0)
    else:
        incl = tl.cumsum(cnt, axis=0, reverse=True).to(tl.int64)
        d = tl.max(tl.where(incl >= rem, rd, -1), axis=0)
        rem = rem - tl.sum(tl.where(rd == d, incl - cnt.to(tl.int64), 0), axis=0)
    return prefix * 256 + d, rem, above


@triton.jit
def _final_k(kcnt_ptr, kst_ptr, st_f_ptr, row, B, NB, store, ROUNDS: tl.constexpr, STORED: tl.constexpr,
             G: tl.constexpr):
    """top-k's final (k-th key, ties of it kept): decided from its last round, or (STORED) loaded from where the
    first launch after that round put it (store: this program is the one that puts it)."""
    if STORED:
        kth = tl.load(kst_ptr + (ROUNDS * B + row) * 2)
        need = tl.load(kst_ptr + (ROUNDS * B + row) * 2 + 1)
    else:
        kth, need, _ = _decide(kcnt_ptr, kcnt_ptr, kcnt_ptr, kst_ptr, st_f_ptr, row, ROUNDS - 1, B, NB, 0.0, 0.0,
                               False, G)
        if store:
            tl.store(kst_ptr + (ROUNDS * B + row) * 2, kth)
            tl.store(kst_ptr + (ROUNDS * B + row) * 2 + 1, need)
    return kth, need


@triton.jit
def _ties_before(cnt_ptr, r, row, B, NB, blk, key, NBP: tl.constexpr):
    """Tokens equal to the final key in the blocks before blk (the last round's bin of its last digit)."""
    rb = tl.arange(0, NBP)
    c = tl.load(cnt_ptr + ((r * B + row) * NB + rb) * 256 + (key & 255), mask=rb < blk, other=0)
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
def _tf32_part(w):
    """w with its low 13 mantissa bits cleared: exactly representable in tf32."""
    return (w.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def _mass_hist(oh_hi, oh_lo, w, acc):
    """acc + hist[hi, lo] of the weights w (BLOCK,) by tensor-core dots: w split into three tf32-exact parts
    (11 + 11 + 2 significant bits), so each product with the one-hot is exact and the sums are fp32 sums."""
    a = _tf32_part(w)
    rest = w - a
    b = _tf32_part(rest)
    c = rest - b
    acc = tl.dot(tl.trans(oh_hi * c[:, None]), oh_lo, acc=acc, input_precision="tf32")
    acc = tl.dot(tl.trans(oh_hi * b[:, None]), oh_lo, acc=acc, input_precision="tf32")
    return tl.dot(tl.trans(oh_hi * a[:, None]), oh_lo, acc=acc, input_precision="tf32")


@triton.jit
def _round_kernel(x_ptr, sx, eos_ptr, n_eos, floats_ptr, ints_ptr, cnt_ptr, mass_ptr, ref_ptr, z_ptr, st_i_ptr,
                  st_f_ptr, kcnt_ptr, kst_ptr, arrive_ptr, V, B, NB, RND: tl.constexpr, ROUNDS: tl.constexpr,
                  MASS: tl.constexpr, TOPK: tl.constexpr, FIRST: tl.constexpr, SUPPRESS: tl.constexpr,
                  NEP: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, NBP: tl.constexpr,
                  G: tl.constexpr):
    """One radix round: decide the previous round's digit (every program of the row alike), then the 256-bin
    count (and mass) histogram of digit RND among this block's tokens in the decided bucket. FIRST: the
    pick's first launch (zeroes the draw's arrival counter)."""
    row = tl.program_id(0)
    blk = tl.program_id(1)
    temperature = tl.load(floats_ptr)
    r16 = tl.arange(0, 16)
    big = tl.full((), float("-inf"), tl.float32)
    pz = tl.zeros((), tl.float32)
    if MASS and RND > 0:
        big, z = _row_stats(ref_ptr, z_ptr, row, NB, NBP)
        pz = tl.load(floats_ptr + 1) * z
    if RND > 0:
        prefix, rem, above = _decide(cnt_ptr, mass_ptr, ref_ptr, st_i_ptr, st_f_ptr, row, RND - 1, B, NB, big,
                                     pz, MASS, G)
    else:
        prefix = tl.zeros((), tl.int64)
        rem = tl.load(ints_ptr).to(tl.int64)
        above = tl.zeros((), tl.float32)
    if blk == 0:
        tl.store(st_i_ptr + (RND * B + row) * 2, prefix)
        tl.store(st_i_ptr + (RND * B + row) * 2 + 1, rem)
        tl.store(st_f_ptr + RND * B + row, above)
        if FIRST:
            tl.store(arrive_ptr + row, 0)
    kth = tl.zeros((), tl.int64)
    need = tl.zeros((), tl.int64)
    seen = tl.zeros((), tl.int64)
    if TOPK:
        kth, need = _final_k(kcnt_ptr, kst_ptr, st_f_ptr, row, B, NB, blk == 0, ROUNDS, RND > 0, G)
        seen = _ties_before(kcnt_ptr, ROUNDS - 1, row, B, NB, blk, kth, NBP)
    HI: tl.constexpr = 32 - 8 * RND
    LO: tl.constexpr = 24 - 8 * RND
    cnt = tl.zeros((16, 16), tl.float32)
    mass = tl.zeros((16, 16), tl.float32)
    m_run = big
    z_run = tl.zeros((), tl.float32)
    for t in range(0, CHUNK, BLOCK):
        offs = blk * CHUNK + t + tl.arange(0, BLOCK)
        valid = offs < V
        x = _load_x(x_ptr, sx, row, offs, valid, eos_ptr, n_eos, SUPPRESS, NEP)
        key = _ukey(x)
        kept = valid
        if TOPK:
            kept, seen = _top_k_keep(key, valid, kth, need, seen)
        inb = kept & ((key >> HI) == prefix)
        dig = (key >> LO) & 255
        oh_hi = (((dig >> 4)[:, None] == r16[None, :]) & inb[:, None]).to(tl.float32)  # (BLOCK, 16)
        oh_lo = ((dig & 15)[:, None] == r16[None, :]).to(tl.float32)
        # 0/1 products summed in fp32: exact counts (at most CHUNK per bin)
        cnt = tl.dot(tl.trans(oh_hi.to(tl.float16)), oh_lo.to(tl.float16), acc=cnt)
        if MASS:
            s = x / temperature
            if RND == 0:
                m_new = tl.maximum(m_run, tl.max(s, axis=0))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                scale = tl.exp(m_run - m_safe)
                w = tl.where(kept, tl.exp(s - m_safe), 0.0)
                mass = _mass_hist(oh_hi, oh_lo, w, mass * scale)
                z_run = z_run * scale + tl.sum(w, axis=0)
                m_run = m_new
            else:
                mass = _mass_hist(oh_hi, oh_lo, tl.where(kept, tl.exp(s - big), 0.0), mass)
    out = ((RND * B + row) * NB + blk) * 256 + r16[:, None] * 16 + r16[None, :]
    tl.store(cnt_ptr + out, cnt.to(tl.int32))
    if MASS:
        tl.store(mass_ptr + out, mass)
        tl.store(ref_ptr + (RND * B + row) * NB + blk, m_run)
        if RND == 0:
            tl.store(z_ptr + row * NB + blk, z_run)


@triton.jit
def _draw_kernel(x_ptr, sx, eos_ptr, n_eos, floats_ptr, ints_ptr, pos_ptr, pos_offset, kcnt_ptr, kst_ptr,
                 pcnt_ptr, pmass_ptr, ref_ptr, z_ptr, pst_i_ptr, pst_f_ptr, score_ptr, id_ptr, arrive_ptr, tok_ptr,
                 done_ptr, done_out_ptr, pad_ptr, keep_ptr, V, B, NB, ROUNDS: tl.constexpr, TOPK: tl.constexpr,
                 TOPP: tl.constexpr, GLUE: tl.constexpr, SUPPRESS: tl.constexpr, NEP: tl.constexpr,
                 WRITE_KEEP: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, NBP: tl.constexpr,
                 G: tl.constexpr):
    """The kept tokens of this block (the final digits decided here), their noise, and the block's first
    maximum of s + gumbel -> (score, id) partials; the row's last program to arrive combines them into the
    token (GLUE: pad for finished rows, and the done flags with the EOS ids). WRITE_KEEP also stores the keep
    mask (B, V) int8."""
    row = tl.program_id(0)
    blk = tl.program_id(1)
    temperature = tl.load(floats_ptr)
    stream = _stream_key(ints_ptr, pos_ptr, pos_offset)
    kth = tl.zeros((), tl.int64)
    need = tl.zeros((), tl.int64)
    seen_k = tl.zeros((), tl.int64)
    if TOPK:
        kth, need = _final_k(kcnt_ptr, kst_ptr, pst_f_ptr, row, B, NB, blk < 0, ROUNDS, TOPP, G)
        seen_k = _ties_before(kcnt_ptr, ROUNDS - 1, row, B, NB, blk, kth, NBP)
    big = tl.full((), float("-inf"), tl.float32)
    pz = tl.zeros((), tl.float32)
    vp = tl.zeros((), tl.int64)
    above = tl.zeros((), tl.float32)
    seen_p = tl.zeros((), tl.int64)
    if TOPP:
        big, z = _row_stats(ref_ptr, z_ptr, row, NB, NBP)
        pz = tl.load(floats_ptr + 1) * z
        vp, _, above = _decide(pcnt_ptr, pmass_ptr, ref_ptr, pst_i_ptr, pst_f_ptr, row, ROUNDS - 1, B, NB, big, pz,
                               True, G)
        seen_p = _ties_before(pcnt_ptr, ROUNDS - 1, row, B, NB, blk, vp, NBP)
    best = tl.full((), float("-inf"), tl.float32)
    best_id = tl.zeros((), tl.int32) + V
    for t in range(0, CHUNK, BLOCK):
        offs = blk * CHUNK + t + tl.arange(0, BLOCK)
        valid = offs < V
        x = _load_x(x_ptr, sx, row, offs, valid, eos_ptr, n_eos, SUPPRESS, NEP)
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
    # every thread's partials stored before the (release) arrival; the last arrival reads them from L2
    tl.debug_barrier()
    ticket = tl.atomic_add(arrive_ptr + row, 1, sem="acq_rel", scope="gpu")
    if ticket == NB - 1:
        rb = tl.arange(0, NBP)
        bm = rb < NB
        scores = tl.load(score_ptr + row * NB + rb, mask=bm, other=float("-inf"), cache_modifier=".cg")
        ids = tl.load(id_ptr + row * NB + rb, mask=bm, other=V, cache_modifier=".cg")
        top = tl.max(scores, axis=0)
        tok = tl.min(tl.where(scores == top, ids, V), axis=0).to(tl.int64)
        if GLUE:
            finished = tl.load(done_ptr + row).to(tl.int1)
            tok = tl.where(finished, tl.load(pad_ptr).to(tl.int64), tok)
            re = tl.arange(0, NEP)
            eos = tl.load(eos_ptr + re, mask=re < n_eos, other=-1)
            is_eos = tl.sum(((eos == tok) & (re < n_eos)).to(tl.int32), axis=0) > 0
            tl.store(done_out_ptr + row, finished | is_eos)
        tl.store(tok_ptr + row, tok)


@triton.jit
def _noise_kernel(ints_ptr, pos_ptr, out_ptr, V, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    u = _uniform(_stream_key(ints_ptr, pos_ptr, 0), row, offs, V)
    tl.store(out_ptr + row * V + offs, u, mask=offs < V)


def chunk_for(batch: int, vocab: int) -> int:
    """Tokens per program for a (batch, vocab) pick: about 128 programs per row at batch 1-2, fewer per row as the
    batch grows (about 256 programs in all), 256 to CHUNK tokens each. Each launch's programs first read every
    histogram of their row (NB of them), so more programs per row cost more in that read than they gain in
    parallelism once the batch fills the SMs. On an H200 (pick_bench.py --kernel-sweep, docs/PERF.md) this was
    within 10 % or 1 us of the fastest chunk at every measured point (32k / 128k vocabulary, batch 1 / 8)."""
    per_row = max(16, min(128, 256 // max(batch, 1)))
    return max(256, min(CHUNK, triton.next_power_of_2(triton.cdiv(vocab, per_row))))


def _launch(kernel, grid, *args, **meta):
    """Every launch of the pick goes through here (tests count them)."""
    wrap_triton(kernel)[grid](*args, **meta)


def uniform_noise(ints: torch.Tensor, position: torch.Tensor, rows: int, vocab: int) -> torch.Tensor:
    """The draw's noise as the kernels compute it, (rows, vocab) fp32: sampling.uniform_noise(ints[1:2], ...)
    bit for bit. ints: a SamplerState's (2,) [top_k, seed]; position (1,)."""
    out = torch.empty(rows, vocab, dtype=torch.float32, device=position.device)
    _launch(_noise_kernel, (rows, triton.cdiv(vocab, BLOCK)), ints, position, out, vocab, BLOCK=BLOCK)
    return out


def _pick(logits: torch.Tensor, floats: torch.Tensor, ints: torch.Tensor, position: torch.Tensor,
          pos_offset: int, use_top_k: bool, use_top_p: bool, chunk: int, keep_out: torch.Tensor | None,
          glue: tuple | None, warps: int = 4):
    """(tok (B,) int64, done (B,) bool or None). glue: None, or (done, eos_ids, pad_id, suppress_eos)."""
    B, V = logits.shape
    x = logits if logits.stride(1) == 1 else logits.contiguous()
    chunk = max(min(chunk or chunk_for(B, V), triton.next_power_of_2(V)), 16)
    block = min(BLOCK, chunk)
    nb = triton.cdiv(V, chunk)
    nbp = triton.next_power_of_2(nb)
    f32, dev = torch.float32, x.device
    cnt = torch.empty((2, ROUNDS, B, nb, BINS), dtype=torch.int32, device=dev)  # [0] top-k, [1] top-p
    mass = torch.empty((ROUNDS, B, nb, BINS), dtype=f32, device=dev)
    ref = torch.empty((ROUNDS, B, nb), dtype=f32, device=dev)
    z = torch.empty((B, nb), dtype=f32, device=dev)
    # per filter, round (and the final top-k decision) and row: (prefix, rem), and the mass above the bucket
    st_i = torch.empty((2, ROUNDS + 1, B, 2), dtype=torch.int64, device=dev)
    st_f = torch.empty((2, ROUNDS + 1, B), dtype=f32, device=dev)
    score = torch.empty((B, nb), dtype=f32, device=dev)
    ids = torch.empty((B, nb), dtype=torch.int32, device=dev)
    tok = torch.empty((B,), dtype=torch.int64, device=dev)
    # the draw's arrival count per row, zeroed by the pick's first round (a memset when there is none)
    arrive = (torch.empty if use_top_k or use_top_p else torch.zeros)((B,), dtype=torch.int32, device=dev)
    if glue is None:
        done, eos_ids, pad_id, suppress = tok, tok, tok, False
        done_out = None
    else:
        done, eos_ids, pad_id, suppress = glue
        done_out = torch.empty((B,), dtype=torch.bool, device=dev)
    n_eos = eos_ids.numel() if glue is not None else 0
    nep = triton.next_power_of_2(max(n_eos, 1))
    grid = (B, nb)
    meta = dict(ROUNDS=ROUNDS, SUPPRESS=suppress, NEP=nep, CHUNK=chunk, BLOCK=block, NBP=nbp, G=min(GROUP, nbp),
                num_warps=warps)
    if use_top_k:
        for r in range(ROUNDS):
            _launch(_round_kernel, grid, x, x.stride(0), eos_ids, n_eos, floats, ints, cnt[0], mass, ref, z,
                    st_i[0], st_f[0], cnt[0], st_i[0], arrive, V, B, nb, RND=r, MASS=False, TOPK=False,
                    FIRST=r == 0, **meta)
    if use_top_p:
        for r in range(ROUNDS):
            _launch(_round_kernel, grid, x, x.stride(0), eos_ids, n_eos, floats, ints, cnt[1], mass, ref, z,
                    st_i[1], st_f[1], cnt[0], st_i[0], arrive, V, B, nb, RND=r, MASS=True, TOPK=use_top_k,
                    FIRST=r == 0 and not use_top_k, **meta)
    write_keep = keep_out is not None
    _launch(_draw_kernel, grid, x, x.stride(0), eos_ids, n_eos, floats, ints, position, pos_offset, cnt[0],
            st_i[0], cnt[1], mass, ref, z, st_i[1], st_f[1], score, ids, arrive, tok, done,
            done_out if done_out is not None else tok, pad_id, keep_out if write_keep else ids, V, B, nb,
            TOPK=use_top_k, TOPP=use_top_p, GLUE=glue is not None, WRITE_KEEP=write_keep, **meta)
    return tok, done_out


def pick(logits: torch.Tensor, floats: torch.Tensor, ints: torch.Tensor, position: torch.Tensor, use_top_k: bool,
         use_top_p: bool, chunk: int | None = None, keep_out: torch.Tensor | None = None,
         warps: int = 4) -> torch.Tensor:
    """One token per row of logits (B, V) (any float dtype) -> (B,) int64; floats, ints, use_*: a
    SamplerState's. chunk: tokens per program (a power of 2; None: chunk_for); warps: per program. keep_out
    (B, V) int8, if given, receives the filters' keep mask."""
    return _pick(logits, floats, ints, position, 0, use_top_k, use_top_p, chunk, keep_out, None, warps)[0]


def pick_next(logits: torch.Tensor, done: torch.Tensor, eos_ids: torch.Tensor, pad_id: torch.Tensor,
              floats: torch.Tensor, ints: torch.Tensor, input_pos: torch.Tensor, use_top_k: bool, use_top_p: bool,
              suppress_eos: bool, chunk: int | None = None,
              keep_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """generate.next_token with a sampler, drawn at cache slot input_pos (1,) + 1, from logits (B, V) in any
    float dtype -> (tok (B,) int64, done (B,) bool): finished rows emit pad_id, a row that draws one of
    eos_ids is done, and suppress_eos keeps eos_ids from being drawn."""
    return _pick(logits, floats, ints, input_pos, 1, use_top_k, use_top_p, chunk, keep_out,
                 (done, eos_ids, pad_id, suppress_eos))


@triton_op("llama_fast::sample_pick", mutates_args=())
def sample_pick(logits: torch.Tensor, floats: torch.Tensor, ints: torch.Tensor, position: torch.Tensor,
                use_top_k: bool, use_top_p: bool) -> torch.Tensor:
    """llama_fast.sampling.sample on the device: logits (B, V), a SamplerState's floats / ints / flags, the
    cache position (1,) of the new token -> (B,) int64."""
    return pick(logits, floats, ints, position, use_top_k, use_top_p)


@triton_op("llama_fast::sample_next", mutates_args=())
def sample_next(logits: torch.Tensor, done: torch.Tensor, eos_ids: torch.Tensor, pad_id: torch.Tensor,
                floats: torch.Tensor, ints: torch.Tensor, input_pos: torch.Tensor, use_top_k: bool,
                use_top_p: bool, suppress_eos: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """pick_next as one op: the whole sampled pick of a decode step (generate's sampled branch)."""
    return pick_next(logits, done, eos_ids, pad_id, floats, ints, input_pos, use_top_k, use_top_p, suppress_eos)
