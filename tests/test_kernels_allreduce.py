"""kernels/allreduce.py: the one-shot all-reduce with the RMSNorm partials in its epilogue. Its barrier is inline
PTX (system-scope atomics), which Triton's CPU interpreter cannot run: here it is compiled for sm_90 and sm_86
and its launch plumbing checked; it runs on GPUs (two ranks) only."""
from __future__ import annotations

import importlib.util

import pytest
import torch

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed (the CPU torch build has none)")


@needs_triton
@pytest.mark.parametrize("arch", [90, 86])
def test_kernel_compiles_with_its_barriers(arch):
    """Both barriers (after the copy into this rank's buffer; before the buffer may be written again) put a
    release signal to every peer; only the first takes with acquire (the loads of the peers' buffers follow it);
    the sum, the rounding and the partials compile around them."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from llama_fast.kernels import allreduce as ar

    names = ["x_ptr", "y_ptr", "ss_ptr", "buffer_ptrs", "signal_pad_ptrs", "N"]
    types = ["*fp16", "*fp16", "*fp32", "i64", "i64", "i32"]
    pdl_modes = (0, 2) if arch >= 90 else (0,)  # programmatic dependent launch: sm_90 on
    for end_sync, pdl in [(e, p) for e in (True, False) for p in pdl_modes]:
        const = dict(RANK=1, WORLD=2, BLOCK=ar.ALLREDUCE_BLOCK, END_SYNC=end_sync, USE_PDL=pdl, GROUP=ar.SS_GROUP)
        src = ASTSource(ar._allreduce_ss_kernel, {**dict(zip(names, types)), **dict.fromkeys(const, "constexpr")},
                        constexprs=const)
        try:
            k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
        except RuntimeError as e:  # no ptxas for this target in this Triton install
            pytest.skip(f"Triton cannot compile for sm_{arch} here: {str(e)[:200]}")
        ptx = k.asm["ptx"]
        puts, acquires = ptx.count("atom.global.release.sys.cas.b32"), ptx.count("atom.global.sys.acquire.cas.b32")
        relaxed_takes = ptx.count("atom.global.sys.relaxed.cas.b32")
        assert (puts, acquires, relaxed_takes) == ((2, 1, 1) if end_sync else (1, 1, 0)), (arch, end_sync)
        assert "cvt.rn.f16.f32" in ptx  # the fp32 sum rounded once to the model dtype
        assert ("griddepcontrol.wait" in ptx) == ("griddepcontrol.launch_dependents" in ptx) == bool(pdl)
        if pdl and end_sync:  # the next kernel may launch before the end barrier, not before the row is written
            assert ptx.index("griddepcontrol.launch_dependents") < ptx.rindex("atom.global.release.sys.cas.b32")


@needs_triton
def test_launch_plumbing():
    """One row of a multiple of 8 values, a power-of-two rank count; one program per ALLREDUCE_BLOCK values;
    the pointer arrays and ranks passed as given; y in x's dtype, the partials fp32."""
    from llama_fast.kernels.allreduce import ALLREDUCE_BLOCK, allreduce_ss_call

    x = torch.zeros(1, 4096, dtype=torch.float16)
    grid, args, kwargs, y, ss = allreduce_ss_call(x, 1234, 5678, 1, 2)
    assert grid == (4096 // ALLREDUCE_BLOCK,) and args[3:] == (1234, 5678, 4096)
    assert (kwargs["RANK"], kwargs["WORLD"], kwargs["END_SYNC"], kwargs["USE_PDL"]) == (1, 2, True, 0)
    assert "launch_pdl" not in kwargs and allreduce_ss_call(x, 0, 0, 0, 2, pdl=2)[2]["launch_pdl"]
    assert y.shape == x.shape and y.dtype == x.dtype and ss.shape == (512,) and ss.dtype == torch.float32
    assert allreduce_ss_call(torch.zeros(1, 1000), 0, 0, 0, 2)[0] == (1,)  # a tail program's masked values
    for bad, message in [((torch.zeros(2, 64), 0, 0, 0, 2), "one contiguous row"),
                         ((torch.zeros(1, 60), 0, 0, 0, 2), "multiple of 8"),
                         ((torch.zeros(1, 64), 0, 0, 0, 3), "power-of-two number of ranks")]:
        with pytest.raises(ValueError, match=message):
            allreduce_ss_call(*bad)
