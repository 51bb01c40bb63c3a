"""kernels/allreduce.py: the one-shot all-reduce with the RMSNorm partials in its epilogue. Its wait needs the
peers (GPUs, two ranks); Triton's interpreter runs the kernel as one rank whose peer's values have landed, and
it is compiled for sm_90 and sm_86 offline."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core_helpers import compile_offline

REPO = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed (the CPU torch build has none)")


@needs_triton
@pytest.mark.parametrize("arch", [90, 86])
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_kernel_compiles_without_atomics(arch, dtype):
    """No atomics; the wait is a loop of volatile loads of this rank's buffer; the fp32 sum rounded once; with
    PDL the next kernel may launch once the row is written, after the wait."""
    from llama_fast.kernels import allreduce as ar

    names = ["x_ptr", "y_ptr", "ss_ptr", "buffer_ptrs", "N", "SLOT"]
    types = [f"*{dtype}", f"*{dtype}", "*fp32", "i64", "i32", "i32"]
    const = dict(RANK=0, WORLD=2, BLOCK=ar.ALLREDUCE_BLOCK, USE_PDL=2 if arch >= 90 else 0, GROUP=ar.SS_GROUP)
    ptx = compile_offline([dict(module="llama_fast.kernels.allreduce", kernel="_allreduce_ss_kernel",
                                names=names, types=types, const=const)], arch)[0]["ptx"]
    assert "atom." not in ptx and "ld.volatile.global" in ptx
    loop = ptx.index("ld.volatile.global")
    label = re.findall(r"^(\$L__BB\w+):", ptx[:loop], re.M)[-1]  # the spin loop's head, before the loads
    assert re.search(rf"bra(\.uni)?\s+{re.escape(label)};", ptx[loop:]), "no branch back to the loads"
    if dtype != "fp32":
        assert f"cvt.rn.{dtype.replace('fp', 'f')}.f32" in ptx
    assert ("griddepcontrol.wait" in ptx) == ("griddepcontrol.launch_dependents" in ptx) == (arch >= 90)
    if arch >= 90:
        assert ptx.rindex("ld.volatile.global") < ptx.index("griddepcontrol.launch_dependents")


@needs_triton
def test_launch_plumbing():
    """One row of a multiple of 8 values that fits a slot, a power-of-two rank count; one program per
    ALLREDUCE_BLOCK values; the pointer array, slot and rank passed as given; y in x's dtype, the partials fp32."""
    from llama_fast.kernels import allreduce as ar

    x = torch.zeros(1, 4096, dtype=torch.float16)
    grid, args, kwargs, y, ss = ar.allreduce_ss_call(x, 1234, 1, 2, 8192)
    assert grid == (4096 // ar.ALLREDUCE_BLOCK,) and args[3:] == (1234, 4096, 8192)
    assert (kwargs["RANK"], kwargs["WORLD"], kwargs["USE_PDL"]) == (1, 2, 0)
    assert "launch_pdl" not in kwargs and ar.allreduce_ss_call(x, 0, 0, 2, 4096, pdl=2)[2]["launch_pdl"]
    assert y.shape == x.shape and y.dtype == x.dtype and ss.shape == (512,) and ss.dtype == torch.float32
    assert ar.allreduce_ss_call(torch.zeros(1, 1000), 0, 0, 2, 1000)[0] == (1,)  # a tail program's masked values
    for bad, message in [((torch.zeros(2, 64), 0, 0, 2, 64), "one contiguous row"),
                         ((torch.zeros(1, 60), 0, 0, 2, 64), "multiple of 8"),
                         ((torch.zeros(1, 64), 0, 0, 3, 64), "power-of-two number of ranks"),
                         ((torch.zeros(1, 64), 0, 0, 2, 32), "does not fit a buffer slot of 32")]:
        with pytest.raises(ValueError, match=message):
            ar.allreduce_ss_call(*bad)


def test_empty_buffer_sets_negative_zero_bits():
    pytest.importorskip("triton", reason="triton is not installed (the CPU torch build has none)")
    from llama_fast.kernels.allreduce import empty_buffer_

    for dtype, itype, bits in ((torch.float16, torch.int16, -32768), (torch.bfloat16, torch.int16, -32768),
                               (torch.float32, torch.int32, -(1 << 31))):
        buf = empty_buffer_(torch.ones(10, dtype=dtype))
        assert bool((buf.view(itype) == bits).all()) and bool((buf == 0).all()), dtype
    with pytest.raises(ValueError, match="no buffers of torch.int8"):
        empty_buffer_(torch.zeros(4, dtype=torch.int8))


# Shared by the interpreter scripts below: the all-reduce's result against the fp32 sum of the ranks' rows
CHECK_SUM = r"""
def check_sum(y, ss, total, own, dtype, ibits, rank):  # y: total rounded once; ss: its partials; own: emptied
    if dtype == torch.bfloat16:  # the interpreter rounds fp32 to bf16 toward zero (a GPU to nearest): one ulp
        torch.testing.assert_close(y.float(), total, rtol=2 ** -7, atol=0)
    else:
        assert torch.equal(y, total.to(dtype)), (rank, (y.float() - total).abs().max())
    torch.testing.assert_close(ss, y.float().view(-1, 8).pow(2).sum(1))
    assert bool((own.view(ibits[0]) == ibits[1]).all()), "this rank's buffer is empty again"
"""


ONE_RANK = r"""
import sys
import torch
from llama_fast.kernels import allreduce as ar
""" + CHECK_SUM + r"""
dtype = getattr(torch, sys.argv[1])
ibits = {2: (torch.int16, -(1 << 15)), 4: (torch.int32, -(1 << 31))}[torch.empty((), dtype=dtype).element_size()]
torch.manual_seed(0)
n, slot = 2048 + 64, 4096  # a masked tail program
for rank in (0, 1):
    x, peer_x = torch.randn(1, n).to(dtype), torch.randn(1, n).to(dtype)
    x[0, 5], peer_x[0, 7] = -0.0, 0.0
    own, peer = ar.empty_buffer_(torch.empty(2 * slot, dtype=dtype)), torch.ones(2 * slot, dtype=dtype)
    other = 1 - rank
    own[other * slot: other * slot + n] = peer_x[0]  # the peer's push has landed in this rank's buffer
    ptrs = [own.data_ptr(), peer.data_ptr()] if rank == 0 else [peer.data_ptr(), own.data_ptr()]
    y, ss = ar.allreduce_ss(x, torch.tensor(ptrs, dtype=torch.int64), rank, 2, slot)
    total = x.float() + peer_x.float()  # in fp32, rounded once to the model dtype
    check_sum(y, ss, total, own, dtype, ibits, rank)
    sent = peer[rank * slot: rank * slot + n]
    assert torch.equal(sent, x[0]) and sent.view(ibits[0])[5].item() == 0, "x pushed, -0.0 as +0.0"
    rest = torch.cat([peer[:rank * slot], peer[rank * slot + n:]])
    assert bool((rest == 1).all()), "nothing else of the peer's buffer written"
print("ok")
"""


@needs_triton
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_kernel_sums_and_empties_its_slots(dtype):
    """In the interpreter, as rank 0 and as rank 1 of two: the row pushed into its slot of the peer's buffer
    (a -0.0 sent as +0.0, nothing else written), the sum in rank order rounded once, its partials, and this
    rank's own slots back to -0.0."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", ONE_RANK, dtype], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


@needs_triton
@pytest.mark.parametrize("arch", [90, 86])
def test_gemv_allreduce_form_compiles(arch):
    """The residual GEMV that all-reduces its rows compiles for the users' sm_86 and for sm_90: its rows stored to
    both ranks' buffers, one relaxed count per program (no fence: a release would wait for this program's stores
    into the peers' memory to complete), then the spin on volatile loads of its own buffer."""
    import importlib

    gemv = importlib.import_module("llama_fast.kernels.gemv")  # the package's `gemv` is the op

    names = ["x_ptr", "w_ptr", "y_ptr", "g_ptr", "res_ptr", "ss_in_ptr", "ss_out_ptr", "s_ptr", "o_ptr", "N", "K",
             "KW", "NSS", "stride_wn", "stride_sn", "eps", "buffer_ptrs", "SLOT", "cnt_ptr", "stride_xm", "stride_ym",
             "stride_rm", "stride_ssm", "stride_sso"]
    types = ["*fp16"] * 6 + ["*fp32"] + ["*fp16"] * 2 + ["i32"] * 6 + ["fp32", "i64", "i32", "*i32"] + ["i32"] * 5
    const = dict(PROLOGUE=gemv.PROLOGUE_NONE, EPILOGUE=gemv.EPILOGUE_RESIDUAL_ALLREDUCE, NSS_BLOCK=1,
                 USE_PDL=1 if arch >= 90 else 0, WFMT=0, GROUP=0, RANK=1, WORLD=2, REDUCERS=gemv.GEMV_REDUCERS,
                 BLOCK_N=8, BLOCK_K=512)
    spec = dict(module="llama_fast.kernels.gemv", kernel="_gemv_fused_kernel", names=names, types=types, const=const)
    ptx = compile_offline([spec], arch)[0]["ptx"]
    assert ptx.count("st.global") >= 2  # the row pushed to both ranks' buffers
    assert "atom.global" in ptx and "ld.volatile.global" in ptx
    assert ptx.index("atom.global") < ptx.index("ld.volatile.global")
    assert "fence." not in ptx and "membar" not in ptx
    assert all(".relaxed." in line for line in ptx.splitlines() if "atom." in line)


REDUCED = r"""
import sys
import torch
from llama_fast.kernels import allreduce as ar
from llama_fast.kernels.gemv import gemv_residual_allreduce, gemv_residual_ss
""" + CHECK_SUM + r"""
dtype = getattr(torch, sys.argv[1])
ibits = {2: (torch.int16, -(1 << 15)), 4: (torch.int32, -(1 << 31))}[torch.empty((), dtype=dtype).element_size()]
torch.manual_seed(0)
n, k, slot = 1096, 96, 2048  # a masked tail program; the row summed in two blocks, the second masked
for rank in (0, 1):
    x, w = torch.randn(1, k).to(dtype), (torch.randn(n, k) / k ** 0.5).to(dtype)
    res = torch.randn(1, n).to(dtype) if rank == 0 else torch.zeros(1, n, dtype=dtype)
    res[0, 3] = -0.0
    w[3] = 0.0  # row 3 sums to -0.0: sent as +0.0
    own, peer = ar.empty_buffer_(torch.empty(2 * slot, dtype=dtype)), torch.ones(2 * slot, dtype=dtype)
    peer_row = torch.randn(1, n).to(dtype)
    own[(1 - rank) * slot: (1 - rank) * slot + n] = peer_row[0]  # the peer's push has landed
    ptrs = torch.tensor([own.data_ptr(), peer.data_ptr()] if rank == 0 else [peer.data_ptr(), own.data_ptr()],
                        dtype=torch.int64)
    counter = torch.zeros(1, dtype=torch.int32)
    y, ss = gemv_residual_allreduce(x, w, res, ptrs, rank, 2, slot, counter)
    want, _ = gemv_residual_ss(x, w, res)  # this rank's row, as the GEMV alone makes it
    want[0, 3] = 0.0
    assert torch.equal(peer[rank * slot: rank * slot + n], want[0]), "the row pushed to the peer"
    assert peer.view(ibits[0])[rank * slot + 3].item() == 0, "-0.0 sent as +0.0"
    rest = torch.cat([peer[:rank * slot], peer[rank * slot + n:]])
    assert bool((rest == 1).all()), "nothing else of the peer's buffer written"
    rows = [want.float(), peer_row.float()] if rank == 0 else [peer_row.float(), want.float()]
    check_sum(y, ss, rows[0] + rows[1], own, dtype, ibits, rank)
    assert counter.item() == 0, "the counter is left 0"
print("ok")
"""


@needs_triton
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_residual_gemv_all_reduces_its_rows(dtype):
    """In the interpreter, as rank 0 and rank 1 of two: gemv_residual_allreduce pushes the row the residual GEMV
    makes to the peer (-0.0 as +0.0, nothing else written), and its last program (the interpreter runs the
    programs one after another: one reducer, allreduce_reducers) sums the slots in rank order (rounded once),
    writes the row and its partials, empties this rank's slots and leaves the counter 0."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", REDUCED, dtype], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr[-3000:]
