"""The slot protocol of the tensor-parallel all-reduce (TensorRT-LLM's Lamport one-shot), shared by the kernels
that take part in it: the all-reduce (allreduce.py) and the residual GEMV that pushes its rows itself (gemv.py).

A site's symmetric buffer holds one slot per rank, and every value of an empty slot is -0.0 (by its bits). A rank
stores its values into its slot of every rank's buffer (a -0.0 sent as +0.0, so a landed value is never mistaken
for an empty one); the reader spins on volatile loads of its own buffer until no value is -0.0, then sets its
slots back to -0.0 (wait_sum). No atomics and no inline PTX: Triton's interpreter runs every piece as one rank
whose peers' values have landed.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def is_empty(v):
    """1 where a buffer value is -0.0 (the empty mark, by its bits), else 0 (int32)."""
    if v.dtype.primitive_bitwidth == 32:
        return (v.to(tl.int32, bitcast=True) == -2147483648).to(tl.int32)
    else:
        return (v.to(tl.int16, bitcast=True) == -32768).to(tl.int32)


@triton.jit
def store_empty(ptrs, mask):
    """Set the buffer values at ptrs to -0.0 (empty), by their bits."""
    if ptrs.dtype.element_ty.primitive_bitwidth == 32:
        tl.store(ptrs.to(tl.pointer_type(tl.int32)), tl.full(ptrs.shape, -2147483648, tl.int32), mask=mask)
    else:
        tl.store(ptrs.to(tl.pointer_type(tl.int16)), tl.full(ptrs.shape, -32768, tl.int16), mask=mask)


@triton.jit
def push_slots(buffer_ptrs, x, offs, mask, SLOT, RANK: tl.constexpr, WORLD: tl.constexpr):
    """Store x (values at offs of this rank's row, in the buffers' dtype) into this rank's slot of every rank's
    buffer (the peers' over NVLink). buffer_ptrs: the device array of the ranks' buffer addresses."""
    x = tl.where(is_empty(x) != 0, tl.zeros_like(x), x)  # -0.0 marks an empty value: send it as +0.0
    bufs = buffer_ptrs.to(tl.pointer_type(tl.uint64))
    for r in tl.static_range(WORLD):
        peer = tl.load(bufs + r).to(tl.pointer_type(x.dtype))
        tl.store(peer + RANK * SLOT + offs, x, mask=mask)


@triton.jit
def wait_sum(buffer_ptrs, out_ptr, offs, m, SLOT, RANK: tl.constexpr, WORLD: tl.constexpr, BLOCK: tl.constexpr):
    """Wait until every rank's values at offs (mask m) have landed in this rank's buffer, empty its slots there
    and return their sum (BLOCK,) in rank order in fp32, rounded once to out_ptr's dtype (the buffers' dtype):
    every rank gets the same bits."""
    dtype = out_ptr.dtype.element_ty
    bufs = buffer_ptrs.to(tl.pointer_type(tl.uint64))
    own = tl.load(bufs + RANK).to(tl.pointer_type(dtype))
    slots = own + tl.arange(0, WORLD)[:, None] * SLOT + offs[None, :]  # (WORLD, BLOCK): every rank's slice
    ms = (tl.arange(0, WORLD)[:, None] >= 0) & m[None, :]
    vals = tl.zeros([WORLD, BLOCK], dtype)
    pending = 1
    while pending > 0:  # until every rank's values have landed
        vals = tl.load(slots, mask=ms, other=0.0, volatile=True)
        pending = tl.sum(is_empty(vals))
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for r in tl.static_range(WORLD):  # the same order on every rank
        acc += tl.sum(tl.where(tl.arange(0, WORLD)[:, None] == r, vals.to(tl.float32), 0.0), axis=0)
    tl.debug_barrier()  # every thread's loads done before its slots are emptied
    store_empty(slots, ms)
    return acc.to(dtype)


@triton.jit
def store_row_ss(y_ptr, ss_ptr, h, block, offs, N, BLOCK: tl.constexpr, GROUP: tl.constexpr):
    """Store the slice `block` (values offs) h of a summed row and its sum-of-squares partials (GROUP values
    each: gemv.SS_GROUP)."""
    tl.store(y_ptr + offs, h, mask=offs < N)
    hf = tl.reshape(h.to(tl.float32), [BLOCK // GROUP, GROUP])  # masked tail values are 0
    groups = block * (BLOCK // GROUP) + tl.arange(0, BLOCK // GROUP)
    tl.store(ss_ptr + groups, tl.sum(hf * hf, axis=1), mask=groups * GROUP < N)
