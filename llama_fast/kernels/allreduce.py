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
each call and a CUDA graph can replay the kernel as captured. A second barrier at the end (END_SYNC) keeps a
rank from overwriting its buffer while a peer may still read it. With programmatic dependent launch the kernel
waits for the residual GEMV before its first load, and lets the next kernel launch once its row and partials
are written, so that kernel's first weight tiles load while this one waits at the end barrier.

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
                         WORLD: tl.constexpr, BLOCK: tl.constexpr, END_SYNC: tl.constexpr, USE_PDL: tl.constexpr,
                         GROUP: tl.constexpr):
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
    h = acc.to(dtype)
    tl.store(y_ptr + offs, h, mask=m)
    hf = tl.reshape(h.to(tl.float32), [BLOCK // GROUP, GROUP])  # GROUP = SS_GROUP; masked tail values are 0
    groups = block * (BLOCK // GROUP) + tl.arange(0, BLOCK // GROUP)
    tl.store(ss_ptr + groups, tl.sum(hf * hf, axis=1), mask=groups * GROUP < N)
    if USE_PDL != 0:
        gdc_launch_dependents()
    if END_SYNC:  # no rank writes its buffer again before every peer has read it
        _meet_peers(signal_pad_ptrs, block, RANK, WORLD, True, False)


def allreduce_ss_call(x: torch.Tensor, buffer_ptrs: int, signal_pad_ptrs: int, rank: int, world: int,
                      end_sync: bool = True, pdl: int = PDL_OFF) -> tuple[tuple, tuple, dict, torch.Tensor,
                                                                         torch.Tensor]:
    """(grid, arguments, keywords, y, ss) of allreduce_ss's launch, pdl already decided (a use_pdl result);
    also what a CPU test checks."""
    if x.dim() != 2 or x.shape[0] != 1 or not x.is_contiguous() or x.shape[1] % SS_GROUP:
        raise ValueError(f"allreduce_ss takes one contiguous row of a multiple of {SS_GROUP} values, got "
                         f"{tuple(x.shape)}")
    if world & (world - 1):
        raise ValueError(f"allreduce_ss takes a power-of-two number of ranks, got {world}")
    n = x.shape[1]
    y = torch.empty_like(x)
    ss = torch.empty((n // SS_GROUP,), device=x.device, dtype=torch.float32)
    args = (x, y, ss, buffer_ptrs, signal_pad_ptrs, n)
    kwargs = dict(RANK=rank, WORLD=world, BLOCK=ALLREDUCE_BLOCK, END_SYNC=end_sync, USE_PDL=pdl, GROUP=SS_GROUP,
                  num_warps=4, **launch_kwargs(pdl))
    return (triton.cdiv(n, ALLREDUCE_BLOCK),), args, kwargs, y, ss


def allreduce_ss(x: torch.Tensor, buffer_ptrs: int, signal_pad_ptrs: int, rank: int, world: int,
                 end_sync: bool = True, pdl: int = PDL_OFF) -> tuple[torch.Tensor, torch.Tensor]:
    """(the sum of x (1, N) over the ranks in x's dtype, its sum-of-squares partials (N / 8,) fp32): buffer_ptrs
    and signal_pad_ptrs the device arrays of the ranks' symmetric buffers (of x's dtype, N elements at least)
    and signal pads (a rendezvoused handle's buffer_ptrs_dev, signal_pad_ptrs_dev). Every rank calls it with
    the same N at the same point. pdl: PDL_OFF or any other mode, which launches it as PDL_TRIGGER_LATE where
    PDL applies (pdl.use_pdl). Plain Python: the batch-1 decode block that calls it runs uncompiled."""
    mode = use_pdl(x, PDL_TRIGGER_LATE if pdl else PDL_OFF)
    grid, args, kwargs, y, ss = allreduce_ss_call(x, buffer_ptrs, signal_pad_ptrs, rank, world, end_sync, mode)
    _allreduce_ss_kernel[grid](*args, **kwargs)
    return y, ss
