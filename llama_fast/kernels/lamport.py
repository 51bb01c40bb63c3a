"""The slot protocol of the tensor-parallel all-reduce (TensorRT-LLM's Lamport one-shot), shared by the kernels
that take part in it: the all-reduce (allreduce.py) and the residual GEMV that pushes its rows itself (gemv.py).

A site's symmetric buffer holds one slot per rank, and every value of an empty slot is -0.0 (by its bits). A rank
stores its values into its slot of every rank's buffer (a -0.0 sent as +0.0, so a landed value is never mistaken
for an empty one); the reader spins on volatile loads of its own buffer until no value is -0.0, then sets its
slots back to -0.0. No atomics and no inline PTX: Triton's interpreter runs every piece as one rank whose peers'
values have landed.
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
