"""The tensor-parallel all-reduce of the batch-1 decode block in one kernel: a one-shot sum over symmetric memory
(torch.distributed._symmetric_memory) with the rounding to the model dtype and the next RMSNorm's
sum-of-squares partials in its epilogue.

torch's one-shot op takes float32 and bfloat16 only, so an fp16 model's site was five launches: the residual
GEMV, a copy widening its output into a float32 symmetric buffer, the one-shot kernel, the narrowing and the
partials (docs/PERF.md, tensor parallel). Here the partial sum stays in the model dtype: each program copies its
slice of this rank's partial into this rank's symmetric buffer, meets the same program on every peer (a
signal-pad barrier), sums the slice over all ranks' buffers in fp32, rounds once and writes the row and its
partials. The residual GEMV and this kernel: two launches a site.

The barrier is the symmetric-memory pattern of torch's own one-shot kernels (and of PyTorch's Triton examples):
program b of rank r sets slot (b, r) of each peer's signal pad from 0 to 1 (release: its copy is visible first)
and waits for slot (b, peer) of its own pad to go from 1 back to 0 (acquire), so every pad is zero again after
each call and a CUDA graph can replay the kernel as captured. There is no closing barrier: the decode block's
two sites (after attention, after the MLP) each have their own buffer and pad and alternate, so a rank writes a
buffer again only two calls later, after the other site's opening barrier, which every peer reaches only once
its kernel at this site has finished reading (the kernels between them wait for their predecessors). With
programmatic dependent launch the kernel waits for the residual GEMV before its first load, and lets the next
kernel launch once its row and partials are written.

PUSH (off; untimed): the same sum without a barrier, TensorRT-LLM's Lamport one-shot: the buffer of a site holds
one slot per rank, every value of an empty slot is -0.0, each rank stores its partial (-0.0 sent as +0.0) into
its slot of every rank's buffer, over NVLink for the peers, and spins on volatile loads of its own buffer until
no value is -0.0 any more: the data is its own flag, one one-way trip a site instead of the barrier's signal round
trip and the remote reads. A rank then sets its own slots back to -0.0; a peer writes them again only at this
site's next call, which it reaches after this rank's push at the other site, stored after the clearing.

Inline PTX (the atomics): Triton's CPU interpreter cannot run it, so CPU tests compile this kernel for sm_90 and
sm_86 and check the launch plumbing; it runs on GPUs only.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .gemv import SS_GROUP
from .pdl import PDL_OFF, PDL_TRIGGER_LATE, gdc_launch_dependents, gdc_wait, launch_kwargs, use_pdl

ALLREDUCE_BLOCK = 1024  # elements per program: 4 programs for Llama-7B's 4096, each its own barrier slot
ALLREDUCE_PUSH = False  # the PUSH kernel (module docstring) instead of the barrier's; untimed, off


@triton.jit
def _thread_index():
    """This thread's index in its program (x only: the kernels launch 1-D)."""
    return tl.inline_asm_elementwise("mov.u32 $0, %tid.x;", "=r", [], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _put_signal(addrs, SEM: tl.constexpr):
    """Set each signal slot at addrs from 0 to 1 (spinning while it still holds the last call's 1)."""
    tl.inline_asm_elementwise(
        f"""
        {{
            .reg .u32 %old;
            .reg .pred %done;
            put_signal:
                atom.global.{SEM}.sys.cas.b32 %old, [$1], 0, 1;
                setp.eq.u32 %done, %old, 0;
                @!%done bra put_signal;
        }}
        """, "=r, l", [addrs], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _take_signal(addrs, SEM: tl.constexpr):
    """Wait until each signal slot at addrs holds 1, and set it back to 0."""
    tl.inline_asm_elementwise(
        f"""
        {{
            .reg .u32 %old;
            .reg .pred %done;
            take_signal:
                atom.global.sys.{SEM}.cas.b32 %old, [$1], 1, 0;
                setp.eq.u32 %done, %old, 1;
                @!%done bra take_signal;
        }}
        """, "=r, l", [addrs], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _meet_peers(signal_pad_ptrs, block, RANK: tl.constexpr, WORLD: tl.constexpr, WROTE: tl.constexpr,
                READS: tl.constexpr):
    """Program `block` of every rank meets here. WROTE: this program's earlier stores reach the peers first
    (release); READS: the peers' stores before their arrival are visible to this program's later loads
    (acquire)."""
    ranks = tl.arange(0, WORLD)
    pads = signal_pad_ptrs.to(tl.pointer_type(tl.uint64))
    peer_pads = tl.load(pads + ranks).to(tl.pointer_type(tl.uint32))  # (WORLD,) each rank's pad
    own_pad = tl.load(pads + RANK).to(tl.pointer_type(tl.uint32))
    if WROTE:
        tl.debug_barrier()  # every thread's stores issued before one of them signals
    if _thread_index() < WORLD:
        _put_signal(peer_pads + block * WORLD + RANK, "release" if WROTE else "relaxed")
        _take_signal(own_pad + block * WORLD + ranks, "acquire" if READS else "relaxed")
    if READS:
        tl.debug_barrier()


@triton.jit
def _allreduce_ss_kernel(x_ptr, y_ptr, ss_ptr, buffer_ptrs, signal_pad_ptrs, N, RANK: tl.constexpr,
                         WORLD: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr, GROUP: tl.constexpr):
    if USE_PDL != 0:
        gdc_wait()  # x comes from the residual GEMV
    block = tl.program_id(0)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    dtype = x_ptr.dtype.element_ty
    bufs = buffer_ptrs.to(tl.pointer_type(tl.uint64))
    own = tl.load(bufs + RANK).to(tl.pointer_type(dtype))
    tl.store(own + offs, tl.load(x_ptr + offs, mask=m), mask=m)
    _meet_peers(signal_pad_ptrs, block, RANK, WORLD, True, True)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for r in tl.static_range(WORLD):  # the same order on every rank: every rank gets the same bits
        peer = tl.load(bufs + r).to(tl.pointer_type(dtype))
        acc += tl.load(peer + offs, mask=m, other=0.0).to(tl.float32)
    _store_row_ss(y_ptr, ss_ptr, acc.to(dtype), block, offs, N, BLOCK, GROUP)
    if USE_PDL != 0:
        gdc_launch_dependents()


@triton.jit
def _store_row_ss(y_ptr, ss_ptr, h, block, offs, N, BLOCK: tl.constexpr, GROUP: tl.constexpr):
    """Store program `block`'s slice h of the summed row and its sum-of-squares partials (GROUP = SS_GROUP)."""
    tl.store(y_ptr + offs, h, mask=offs < N)
    hf = tl.reshape(h.to(tl.float32), [BLOCK // GROUP, GROUP])  # masked tail values are 0
    groups = block * (BLOCK // GROUP) + tl.arange(0, BLOCK // GROUP)
    tl.store(ss_ptr + groups, tl.sum(hf * hf, axis=1), mask=groups * GROUP < N)


@triton.jit
def _is_empty(v):
    """1 where a PUSH buffer value is -0.0 (the empty mark, by its bits), else 0 (int32)."""
    if v.dtype.primitive_bitwidth == 32:
        return (v.to(tl.int32, bitcast=True) == -2147483648).to(tl.int32)
    else:
        return (v.to(tl.int16, bitcast=True) == -32768).to(tl.int32)


@triton.jit
def _store_empty(ptrs, mask):
    """Set the PUSH buffer values at ptrs to -0.0, by their bits."""
    if ptrs.dtype.element_ty.primitive_bitwidth == 32:
        tl.store(ptrs.to(tl.pointer_type(tl.int32)), tl.full(ptrs.shape, -2147483648, tl.int32), mask=mask)
    else:
        tl.store(ptrs.to(tl.pointer_type(tl.int16)), tl.full(ptrs.shape, -32768, tl.int16), mask=mask)


@triton.jit
def _allreduce_push_kernel(x_ptr, y_ptr, ss_ptr, buffer_ptrs, N, SLOT, RANK: tl.constexpr, WORLD: tl.constexpr,
                           BLOCK: tl.constexpr, USE_PDL: tl.constexpr, GROUP: tl.constexpr):
    if USE_PDL != 0:
        gdc_wait()  # x comes from the residual GEMV
    block = tl.program_id(0)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    dtype = x_ptr.dtype.element_ty
    bufs = buffer_ptrs.to(tl.pointer_type(tl.uint64))
    x = tl.load(x_ptr + offs, mask=m)
    x = tl.where(_is_empty(x) != 0, tl.zeros_like(x), x)  # -0.0 marks an empty value: send it as +0.0
    for r in tl.static_range(WORLD):  # this rank's slot of every rank's buffer (the peers' over NVLink)
        peer = tl.load(bufs + r).to(tl.pointer_type(dtype))
        tl.store(peer + RANK * SLOT + offs, x, mask=m)
    own = tl.load(bufs + RANK).to(tl.pointer_type(dtype))
    slots = own + tl.arange(0, WORLD)[:, None] * SLOT + offs[None, :]  # (WORLD, BLOCK): every rank's slice
    ms = (tl.arange(0, WORLD)[:, None] >= 0) & m[None, :]
    vals = tl.zeros([WORLD, BLOCK], dtype)
    pending = 1
    while pending > 0:  # until every rank's values have landed
        vals = tl.load(slots, mask=ms, other=0.0, volatile=True)
        pending = tl.sum(_is_empty(vals))
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for r in tl.static_range(WORLD):  # the same order on every rank: every rank gets the same bits
        acc += tl.sum(tl.where(tl.arange(0, WORLD)[:, None] == r, vals.to(tl.float32), 0.0), axis=0)
    tl.debug_barrier()  # every thread's loads done before its slots are emptied
    _store_empty(slots, ms)
    _store_row_ss(y_ptr, ss_ptr, acc.to(dtype), block, offs, N, BLOCK, GROUP)
    if USE_PDL != 0:
        gdc_launch_dependents()


def allreduce_ss_call(x: torch.Tensor, buffer_ptrs: int, signal_pad_ptrs: int, rank: int, world: int,
                      pdl: int = PDL_OFF, slot: int = 0) -> tuple:
    """(kernel, grid, arguments, keywords, y, ss) of allreduce_ss's launch, pdl already decided (a use_pdl
    result); also what a CPU test checks. slot > 0: the PUSH kernel, each rank's slot `slot` values apart in
    every buffer (signal_pad_ptrs unused)."""
    if x.dim() != 2 or x.shape[0] != 1 or not x.is_contiguous() or x.shape[1] % SS_GROUP:
        raise ValueError(f"allreduce_ss takes one contiguous row of a multiple of {SS_GROUP} values, got "
                         f"{tuple(x.shape)}")
    if world & (world - 1):
        raise ValueError(f"allreduce_ss takes a power-of-two number of ranks, got {world}")
    n = x.shape[1]
    if slot and slot < n:
        raise ValueError(f"allreduce_ss: a row of {n} values does not fit a buffer slot of {slot}")
    y = torch.empty_like(x)
    ss = torch.empty((n // SS_GROUP,), device=x.device, dtype=torch.float32)
    kwargs = dict(RANK=rank, WORLD=world, BLOCK=ALLREDUCE_BLOCK, USE_PDL=pdl, GROUP=SS_GROUP, num_warps=4,
                  **launch_kwargs(pdl))
    grid = (triton.cdiv(n, ALLREDUCE_BLOCK),)
    if slot:
        return _allreduce_push_kernel, grid, (x, y, ss, buffer_ptrs, n, slot), kwargs, y, ss
    return _allreduce_ss_kernel, grid, (x, y, ss, buffer_ptrs, signal_pad_ptrs, n), kwargs, y, ss


def allreduce_ss(x: torch.Tensor, buffer_ptrs: int, signal_pad_ptrs: int, rank: int, world: int,
                 pdl: int = PDL_OFF, slot: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(the sum of x (1, N) over the ranks in x's dtype, its sum-of-squares partials (N / 8,) fp32): buffer_ptrs
    and signal_pad_ptrs the device arrays of the ranks' symmetric buffers (of x's dtype, N elements at least)
    and signal pads (a rendezvoused handle's buffer_ptrs_dev, signal_pad_ptrs_dev). Every rank calls it with
    the same N at the same point, and a buffer is used at most every other call (the decode block's two sites
    each have their own). slot > 0: the PUSH kernel over buffers of `world` slots of `slot` values, all -0.0
    before the first call (empty_push_buffer_). pdl: PDL_OFF or any other mode, which launches it as
    PDL_TRIGGER_LATE where PDL applies (pdl.use_pdl). Plain Python: the batch-1 decode block that calls it runs
    uncompiled."""
    mode = use_pdl(x, PDL_TRIGGER_LATE if pdl else PDL_OFF)
    kernel, grid, args, kwargs, y, ss = allreduce_ss_call(x, buffer_ptrs, signal_pad_ptrs, rank, world, mode, slot)
    kernel[grid](*args, **kwargs)
    return y, ss


def empty_push_buffer_(buf: torch.Tensor) -> torch.Tensor:
    """Set every value of a PUSH buffer to -0.0 (the empty mark), by its bits."""
    bits = {2: (torch.int16, -(1 << 15)), 4: (torch.int32, -(1 << 31))}.get(buf.element_size())
    if bits is None:
        raise ValueError(f"allreduce_ss: no PUSH buffers of {buf.dtype}")
    buf.view(bits[0]).fill_(bits[1])
    return buf
