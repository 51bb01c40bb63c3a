"""kernels/allreduce.py: the one-shot all-reduce with the RMSNorm partials in its epilogue. Its barrier is inline
PTX (system-scope atomics), which Triton's CPU interpreter cannot run: here it is compiled for sm_90 and sm_86
and its launch plumbing checked; it runs on GPUs (two ranks) only. The PUSH kernel has no atomics: the
interpreter runs it as one rank whose peer's values have already landed."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed (the CPU torch build has none)")


def _compile(kernel, names, types, const, arch):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(kernel, {**dict(zip(names, types)), **dict.fromkeys(const, "constexpr")}, constexprs=const)
    try:
        return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4}).asm["ptx"]
    except RuntimeError as e:  # no ptxas for this target in this Triton install
        pytest.skip(f"Triton cannot compile for sm_{arch} here: {str(e)[:200]}")


@needs_triton
@pytest.mark.parametrize("arch", [90, 86])
def test_kernel_compiles_with_its_barrier(arch):
    """One barrier (after the copy into this rank's buffer): a release signal to every peer, an acquire take
    before the loads of the peers' buffers, no closing barrier; the sum, the rounding and the partials compile
    around it; with PDL the next kernel may launch once the row is written."""
    from llama_fast.kernels import allreduce as ar

    names = ["x_ptr", "y_ptr", "ss_ptr", "buffer_ptrs", "signal_pad_ptrs", "N"]
    types = ["*fp16", "*fp16", "*fp32", "i64", "i64", "i32"]
    for pdl in (0, 2) if arch >= 90 else (0,):  # programmatic dependent launch: sm_90 on
        const = dict(RANK=1, WORLD=2, BLOCK=ar.ALLREDUCE_BLOCK, USE_PDL=pdl, GROUP=ar.SS_GROUP)
        ptx = _compile(ar._allreduce_ss_kernel, names, types, const, arch)
        puts, acquires = ptx.count("atom.global.release.sys.cas.b32"), ptx.count("atom.global.sys.acquire.cas.b32")
        assert (puts, acquires, ptx.count("atom.global.sys.relaxed.cas.b32")) == (1, 1, 0), arch
        assert "cvt.rn.f16.f32" in ptx  # the fp32 sum rounded once to the model dtype
        assert ("griddepcontrol.wait" in ptx) == ("griddepcontrol.launch_dependents" in ptx) == bool(pdl)
        if pdl:
            assert ptx.index("atom.global.sys.acquire.cas.b32") < ptx.index("griddepcontrol.launch_dependents")


@needs_triton
@pytest.mark.parametrize("arch", [90, 86])
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_push_kernel_compiles_without_atomics(arch, dtype):
    """PUSH: no atomics, no signal pads; the wait is a loop of volatile loads of this rank's buffer."""
    from llama_fast.kernels import allreduce as ar

    names = ["x_ptr", "y_ptr", "ss_ptr", "buffer_ptrs", "N", "SLOT"]
    types = [f"*{dtype}", f"*{dtype}", "*fp32", "i64", "i32", "i32"]
    const = dict(RANK=0, WORLD=2, BLOCK=ar.ALLREDUCE_BLOCK, USE_PDL=2 if arch >= 90 else 0, GROUP=ar.SS_GROUP)
    ptx = _compile(ar._allreduce_push_kernel, names, types, const, arch)
    assert "atom." not in ptx and "ld.volatile.global" in ptx
    loop = ptx.index("ld.volatile.global")
    assert ptx.rindex("bra", loop) > loop  # the loads sit in the spin loop: a branch back after them


@needs_triton
def test_launch_plumbing():
    """One row of a multiple of 8 values, a power-of-two rank count; one program per ALLREDUCE_BLOCK values;
    the pointer arrays and ranks passed as given; y in x's dtype, the partials fp32; slot > 0 the PUSH kernel,
    which needs the row to fit a slot."""
    from llama_fast.kernels import allreduce as ar

    x = torch.zeros(1, 4096, dtype=torch.float16)
    kernel, grid, args, kwargs, y, ss = ar.allreduce_ss_call(x, 1234, 5678, 1, 2)
    assert kernel is ar._allreduce_ss_kernel
    assert grid == (4096 // ar.ALLREDUCE_BLOCK,) and args[3:] == (1234, 5678, 4096)
    assert (kwargs["RANK"], kwargs["WORLD"], kwargs["USE_PDL"]) == (1, 2, 0)
    assert "launch_pdl" not in kwargs and ar.allreduce_ss_call(x, 0, 0, 0, 2, pdl=2)[3]["launch_pdl"]
    assert y.shape == x.shape and y.dtype == x.dtype and ss.shape == (512,) and ss.dtype == torch.float32
    assert ar.allreduce_ss_call(torch.zeros(1, 1000), 0, 0, 0, 2)[1] == (1,)  # a tail program's masked values
    kernel, grid, args, kwargs, _, _ = ar.allreduce_ss_call(x, 1234, 5678, 1, 2, slot=8192)
    assert kernel is ar._allreduce_push_kernel and args[3:] == (1234, 4096, 8192) and kwargs["RANK"] == 1
    for bad, message in [((torch.zeros(2, 64), 0, 0, 0, 2), "one contiguous row"),
                         ((torch.zeros(1, 60), 0, 0, 0, 2), "multiple of 8"),
                         ((torch.zeros(1, 64), 0, 0, 0, 3), "power-of-two number of ranks"),
                         ((torch.zeros(1, 64), 0, 0, 0, 2, 0, 32), "does not fit a buffer slot of 32")]:
        with pytest.raises(ValueError, match=message):
            ar.allreduce_ss_call(*bad)


def test_empty_push_buffer_sets_negative_zero_bits():
    pytest.importorskip("triton", reason="triton is not installed (the CPU torch build has none)")
    from llama_fast.kernels.allreduce import empty_push_buffer_

    for dtype, itype, bits in ((torch.float16, torch.int16, -32768), (torch.bfloat16, torch.int16, -32768),
                               (torch.float32, torch.int32, -(1 << 31))):
        buf = empty_push_buffer_(torch.ones(10, dtype=dtype))
        assert bool((buf.view(itype) == bits).all()) and bool((buf == 0).all()), dtype
    with pytest.raises(ValueError, match="no PUSH buffers of torch.int8"):
        empty_push_buffer_(torch.zeros(4, dtype=torch.int8))


PUSH = r"""
import sys
import torch
from llama_fast.kernels import allreduce as ar

dtype = getattr(torch, sys.argv[1])
ibits = {2: (torch.int16, -(1 << 15)), 4: (torch.int32, -(1 << 31))}[torch.empty((), dtype=dtype).element_size()]
torch.manual_seed(0)
n, slot = 2048 + 64, 4096  # a masked tail program
for rank in (0, 1):
    x, peer_x = torch.randn(1, n).to(dtype), torch.randn(1, n).to(dtype)
    x[0, 5], peer_x[0, 7] = -0.0, 0.0
    own, peer = ar.empty_push_buffer_(torch.empty(2 * slot, dtype=dtype)), torch.ones(2 * slot, dtype=dtype)
    other = 1 - rank
    own[other * slot: other * slot + n] = peer_x[0]  # the peer's push has landed in this rank's buffer
    ptrs = [own.data_ptr(), peer.data_ptr()] if rank == 0 else [peer.data_ptr(), own.data_ptr()]
    y, ss = ar.allreduce_ss(x, torch.tensor(ptrs, dtype=torch.int64), 0, rank, 2, slot=slot)
    total = x.float() + peer_x.float()  # in fp32, rounded once to the model dtype
    if dtype == torch.bfloat16:  # the interpreter rounds fp32 to bf16 toward zero (a GPU to nearest): one ulp
        torch.testing.assert_close(y.float(), total, rtol=2 ** -7, atol=0)
    else:
        assert torch.equal(y, total.to(dtype)), (rank, (y.float() - total).abs().max())
    torch.testing.assert_close(ss, y.float().view(-1, 8).pow(2).sum(1))
    assert bool((own.view(ibits[0]) == ibits[1]).all()), "this rank's buffer is empty again"
    sent = peer[rank * slot: rank * slot + n]
    assert torch.equal(sent, x[0]) and sent.view(ibits[0])[5].item() == 0, "x pushed, -0.0 as +0.0"
    rest = torch.cat([peer[:rank * slot], peer[rank * slot + n:]])
    assert bool((rest == 1).all()), "nothing else of the peer's buffer written"
print("ok")
"""


@needs_triton
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_push_kernel_sums_and_empties_its_slots(dtype):
    """In the interpreter, as rank 0 and as rank 1 of two: the row pushed into its slot of the peer's buffer
    (a -0.0 sent as +0.0, nothing else written), the sum in rank order rounded once, its partials, and this
    rank's own slots back to -0.0."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", PUSH, dtype], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
