"""The tensor-parallel all-reduce of the batch-1 decode block in one kernel: a one-shot sum over symmetric memory
(torch.distributed._symmetric_memory) with the rounding to the model dtype and the next RMSNorm's
sum-of-squares partials in its epilogue.

torch's one-shot op takes float32 and bfloat16 only, so an fp16 model's site was five launches: the residual
GEMV, a copy widening its output into a float32 symmetric buffer, the one-shot kernel, the narrowing and the
partials (docs/PERF.md, tensor parallel). Here the partial sum stays in the model dtype, and no barrier is
needed: TensorRT-LLM's Lamport one-shot. The buffer of a site holds one slot per rank, and every value of an
empty slot is -0.0. Each program stores its slice of this rank's partial (a -0.0 sent as +0.0) into this rank's
slot of every rank's buffer, over NVLink for the peers, then spins on volatile loads of its own buffer until no
value is -0.0 any more: the data is its own flag, one one-way trip a site. It sums the slots in rank order in
fp32 (every rank gets the same bits), rounds once, writes the row and its partials, and sets its own slots back
to -0.0. The residual GEMV and this kernel: two launches a site; the buffers need no reset between CUDA-graph
replays. The slot protocol itself is kernels/lamport.py. The batch-1 decode block's sites no longer call it: there
the residual GEMV stores its rows into the slots from its epilogue and its last programs wait and sum
(gemv.gemv_residual_allreduce, one launch a site); rows that no residual GEMV makes still come here
(parallel.SymmAllReduce.with_ss).

Reuse is safe without a closing barrier: the decode block's two sites (after attention, after the MLP) each have
their own buffer and alternate, so a peer writes this rank's slots of a site again only at that site's next call,
which it reaches after it has read this rank's push at the other site, and this rank stored that push after
clearing (the kernels between them wait for their predecessors: stream order, or PDL's wait). With programmatic
dependent launch the kernel waits for the residual GEMV before its first load, and lets the next kernel launch
once its row and partials are written.

No atomics and no inline PTX: Triton's CPU interpreter runs the kernel as one rank whose peers' values have
landed (tests/test_kernels_allreduce.py); the wait itself needs the peers, on GPUs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .gemv import SS_GROUP
from .lamport import push_slots, store_row_ss, wait_sum
from .pdl import PDL_OFF, PDL_TRIGGER_LATE, gdc_launch_dependents, gdc_wait, launch_kwargs, use_pdl

ALLREDUCE_BLOCK = 1024  # elements per program: 4 programs for Llama-7B's 4096, each waiting for its own slice


@triton.jit
def _allreduce_ss_kernel(x_ptr, y_ptr, ss_ptr, buffer_ptrs, N, SLOT, RANK: tl.constexpr, WORLD: tl.constexpr,
                         BLOCK: tl.constexpr, USE_PDL: tl.constexpr, GROUP: tl.constexpr):
    if USE_PDL != 0:
        gdc_wait()  # x comes from the residual GEMV
    block = tl.program_id(0)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    push_slots(buffer_ptrs, tl.load(x_ptr + offs, mask=m), offs, m, SLOT, RANK, WORLD)
    h = wait_sum(buffer_ptrs, x_ptr, offs, m, SLOT, RANK, WORLD, BLOCK)
    store_row_ss(y_ptr, ss_ptr, h, block, offs, N, BLOCK, GROUP)
    if USE_PDL != 0:
        gdc_launch_dependents()


def allreduce_ss_call(x: torch.Tensor, buffer_ptrs: int, rank: int, world: int, slot: int,
                      pdl: int = PDL_OFF) -> tuple[tuple, tuple, dict, torch.Tensor, torch.Tensor]:
    """(grid, arguments, keywords, y, ss) of allreduce_ss's launch, pdl already decided (a use_pdl result); also
    what a CPU test checks."""
    if x.dim() != 2 or x.shape[0] != 1 or not x.is_contiguous() or x.shape[1] % SS_GROUP:
        raise ValueError(f"allreduce_ss takes one contiguous row of a multiple of {SS_GROUP} values, got "
                         f"{tuple(x.shape)}")
    if world & (world - 1):
        raise ValueError(f"allreduce_ss takes a power-of-two number of ranks, got {world}")
    n = x.shape[1]
    if slot < n:
        raise ValueError(f"allreduce_ss: a row of {n} values does not fit a buffer slot of {slot}")
    y = torch.empty_like(x)
    ss = torch.empty((n // SS_GROUP,), device=x.device, dtype=torch.float32)
    kwargs = dict(RANK=rank, WORLD=world, BLOCK=ALLREDUCE_BLOCK, USE_PDL=pdl, GROUP=SS_GROUP, num_warps=4,
                  **launch_kwargs(pdl))
    return (triton.cdiv(n, ALLREDUCE_BLOCK),), (x, y, ss, buffer_ptrs, n, slot), kwargs, y, ss


def allreduce_ss(x: torch.Tensor, buffer_ptrs: int, rank: int, world: int, slot: int,
                 pdl: int = PDL_OFF) -> tuple[torch.Tensor, torch.Tensor]:
    """(the sum of x (1, N) over the ranks in x's dtype, its sum-of-squares partials (N / 8,) fp32).
    buffer_ptrs: the device array of the ranks' symmetric buffers (a rendezvoused handle's buffer_ptrs_dev), each
    of x's dtype, `world` slots of `slot` >= N values, all -0.0 before the first call (empty_buffer_). Every rank
    calls it with the same N at the same point, and a buffer serves at most every other call (the decode block's
    two sites each have their own). pdl: PDL_OFF or any other mode, which launches it as PDL_TRIGGER_LATE where
    PDL applies (pdl.use_pdl). Plain Python: the batch-1 decode block that calls it runs uncompiled."""
    mode = use_pdl(x, PDL_TRIGGER_LATE if pdl else PDL_OFF)
    grid, args, kwargs, y, ss = allreduce_ss_call(x, buffer_ptrs, rank, world, slot, mode)
    _allreduce_ss_kernel[grid](*args, **kwargs)
    return y, ss


def empty_buffer_(buf: torch.Tensor) -> torch.Tensor:
    """Set every value of an all-reduce buffer to -0.0 (empty), by its bits."""
    bits = {2: (torch.int16, -(1 << 15)), 4: (torch.int32, -(1 << 31))}.get(buf.element_size())
    if bits is None:
        raise ValueError(f"allreduce_ss: no buffers of {buf.dtype}")
    buf.view(bits[0]).fill_(bits[1])
    return buf
