"""Triton kernels (llama_fast/kernels.py) against torch references, in Triton's interpreter on the CPU.

The CPU torch build ships no Triton: there these tests skip, saying so. Where Triton is installed (a GPU
box, or `pip install triton` beside the CPU build) they run the real kernels' code on CPU tensors."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK = r"""
import torch, triton
import torch.nn.functional as F
from llama_fast import kernels as kn

torch.manual_seed(0)
dt = getattr(torch, sys.argv[1])
tol = 1e-6 if dt == torch.float32 else 2e-3


def fused(x, w, g, res, ss, eps, prologue, epilogue, N):
    K = x.shape[1]
    y = torch.empty(1, N, dtype=x.dtype)
    ss_out = torch.full((triton.cdiv(N, kn.SS_GROUP),), float("nan"))
    kn._gemv_fused_kernel.fn[(triton.cdiv(N, 16),)](x, w, y, g, res, ss, ss_out, N, K, ss.numel(), w.stride(0), eps,
                                                     PROLOGUE=prologue, EPILOGUE=epilogue,
                                                     NSS_BLOCK=triton.next_power_of_2(ss.numel()), USE_PDL=False,
                                                     BLOCK_N=16, BLOCK_K=256)
    return y, ss_out


def rmsnorm(x, g, eps):  # transformers' LlamaRMSNorm
    xf = x.float()
    return g * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rel(y, ref):
    return ((y.float() - ref).norm() / ref.norm()).item()


for N, K in [(96, 300), (37, 512), (64, 1000)]:  # tails in both N and K
    x = torch.randn(1, K).to(dt)
    g = (1 + 0.1 * torch.randn(K)).to(dt)
    w = (0.05 * torch.randn(N, K)).to(dt)
    w13 = (0.05 * torch.randn(2 * N, K)).to(dt)
    res = torch.randn(1, N).to(dt)
    ss = x.float().pow(2).view(-1, 4 if K % 8 else 8).sum(-1)  # any grouping: only the sum matters
    NONE, RES, SWI = kn.PROLOGUE_NONE, kn.EPILOGUE_RESIDUAL_SS, kn.EPILOGUE_SWIGLU
    RMS, LATE = kn.PROLOGUE_RMSNORM, kn.PROLOGUE_RMSNORM_LATE
    y_res, ss_res = fused(x, w, x, res, x, 0.0, NONE, RES, N)
    ref_res = (res.float() + (x.float() @ w.float().T).to(dt).float()).to(dt)
    gate, up = (rmsnorm(x, g, 1e-5).float() @ w13.float().T).to(dt).chunk(2, dim=-1)
    checks = {
        "gemv": (fused(x, w, x, x, x, 0.0, NONE, kn.EPILOGUE_NONE, N)[0], x.float() @ w.float().T),
        "rmsnorm": (fused(x, w, g, x, ss, 1e-5, RMS, kn.EPILOGUE_NONE, N)[0], rmsnorm(x, g, 1e-5).float() @ w.float().T),
        "residual": (y_res, ref_res.float()),
        "ss_partials": (ss_res, F.pad(ref_res.float().pow(2), (0, 8 * ss_res.numel() - N)).view(-1, 8).sum(-1)),
        "swiglu": (fused(x, w13, g, x, ss, 1e-5, RMS, SWI, N)[0], (F.silu(gate.float()).to(dt) * up).float()),
        "rmsnorm_late": (fused(x, w, g, x, ss, 1e-5, LATE, kn.EPILOGUE_NONE, N)[0],
                         rmsnorm(x, g, 1e-5).float() @ w.float().T),
        "swiglu_late": (fused(x, w13, g, x, ss, 1e-5, LATE, SWI, N)[0], (F.silu(gate.float()).to(dt) * up).float()),
    }
    # the public ops: eager launches take the pinned configs (kn.gemv_config), not the autotuner's
    checks["op residual"] = (kn.gemv_residual_ss(x, w, res)[0], ref_res.float())
    checks["op swiglu"] = (kn.gemv_rmsnorm_swiglu(x, ss, g, w13, 1e-5), checks["swiglu"][1])
    checks["op rmsnorm"] = (kn.gemv_rmsnorm(x, ss, g, w, 1e-5), checks["rmsnorm"][1])
    for name, (y, ref) in checks.items():
        err = rel(y, ref)
        assert err < tol, (name, N, K, err)
        print(name, N, K, f"{err:.1e}")
    assert torch.allclose(kn.ss_partials(x).sum(), x.float().pow(2).sum()) if K % 8 == 0 else True
for H, Hkv, D, K, S, pos in [(4, 2, 32, 300, 40, 17), (2, 2, 64, 512, 8, 0)]:  # GQA with a K tail; MHA
    N = (H + 2 * Hkv) * D
    x = torch.randn(1, K).to(dt)
    g = (1 + 0.1 * torch.randn(K)).to(dt)
    w = (0.05 * torch.randn(N, K)).to(dt)
    ss = x.float().pow(2).view(-1, 4).sum(-1)
    ang = torch.rand(D // 2) * 3
    cos = torch.cat([ang.cos(), ang.cos()]).to(dt)
    sin = torch.cat([-ang.sin(), ang.sin()]).to(dt)  # the signed table
    kc, vc = torch.zeros(1, Hkv, S, D, dtype=dt), torch.zeros(1, Hkv, S, D, dtype=dt)
    q = torch.empty(1, H * D, dtype=dt)
    kn._gemv_qkv_rope_kernel.fn[((H + 2 * Hkv) * (D // 16),)](
        x, w, q, kc, vc, g, ss, cos, sin, torch.tensor([pos]), N, K, ss.numel(), w.stride(0), 1e-5, H, Hkv,
        kc.stride(1), kc.stride(2), D=D, NSS_BLOCK=triton.next_power_of_2(ss.numel()), USE_PDL=False,
        BLOCK_N=16, BLOCK_K=256)
    qkv = (rmsnorm(x, g, 1e-5).float() @ w.float().T).to(dt)
    rq, rk, rv = qkv.split([H * D, Hkv * D, Hkv * D], dim=-1)

    def rope(t):  # (n, D) in dt, eager fp16 arithmetic as the model's apply_rope
        swapped = t.unflatten(-1, (2, -1)).flip(-2).flatten(-2)
        return t * cos + swapped * sin
    checks = {"qkv_rope q": (q, rope(rq.view(H, D)).reshape(1, -1).float()),
              "qkv_rope k": (kc[0, :, pos], rope(rk.view(Hkv, D)).float()),
              "qkv_rope v": (vc[0, :, pos], rv.view(Hkv, D).float())}
    kc2, vc2 = torch.zeros_like(kc), torch.zeros_like(vc)
    q2 = kn.gemv_rmsnorm_qkv_rope(x, ss, g, w, 1e-5, cos, sin, kc2, vc2, torch.tensor([pos]), H)
    assert torch.equal(q2, q) and torch.equal(kc2, kc) and torch.equal(vc2, vc)  # the op, pinned config
    for name, (y, ref) in checks.items():
        err = rel(y, ref)
        assert err < tol, (name, H, Hkv, D, err)
        print(name, H, Hkv, D, f"{err:.1e}")
    others = torch.ones(S, dtype=torch.bool)
    others[pos] = False
    assert not kc[0, :, others].any() and not vc[0, :, others].any()  # only slot pos was written
for B, H, Hkv, S, D, pos, pad in [(1, 4, 4, 300, 64, 257, [0]), (2, 8, 2, 200, 32, 130, [0, 17]),
                                  (1, 2, 1, 64, 16, 0, [0])]:  # MHA over 3 chunks; GQA + left pad; one key
    q, k, v = torch.randn(B, H, 1, D).to(dt), torch.randn(B, Hkv, S, D).to(dt), torch.randn(B, Hkv, S, D).to(dt)
    slots = torch.arange(S)
    mask = (slots[None, :] <= pos) & (slots[None, :] >= torch.tensor(pad)[:, None])  # (B, S)
    nsplit = triton.cdiv(S, kn.ATTN_CHUNK)
    m, l, acc = torch.empty(B * H * nsplit), torch.empty(B * H * nsplit), torch.empty(B * H * nsplit, D)
    o = torch.empty(B, H, 1, D, dtype=dt)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask[:, None, None, :],
                                         enable_gqa=H != Hkv)
    outs = []
    for newest in (False, True):  # True: the PDL form's re-read of each chunk's newest attended row
        o = torch.empty(B, H, 1, D, dtype=dt)
        kn._decode_attn_split_kernel[(B * H, nsplit)](q, k, v, mask, m, l, acc, S, H, H // Hkv, D ** -0.5,
                                                      q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                                                      k.stride(2), mask.stride(0), nsplit, D=D, CHUNK=kn.ATTN_CHUNK,
                                                      USE_PDL=False, NEWEST_AFTER_WAIT=newest)
        kn._decode_attn_combine_kernel[(B * H,)](m, l, acc, o, nsplit, D=D, SPLITS=triton.next_power_of_2(nsplit),
                                                 USE_PDL=False)
        err = rel(o, ref)
        assert err < tol, ("attention", newest, B, H, Hkv, S, err)
        print("attention", newest, B, H, Hkv, S, f"{err:.1e}")
        outs.append(o)
    assert torch.equal(outs[0], outs[1])
    cnt = torch.zeros(B * H, dtype=torch.int32)
    for call in range(2):  # the one-launch form leaves its counters at zero for the next call
        o1 = torch.empty(B, H, 1, D, dtype=dt)
        kn._decode_attn_one_launch_kernel[(B * H, nsplit)](
            q, k, v, mask, m, l, acc, cnt, o1, S, H, H // Hkv, D ** -0.5, q.stride(0), q.stride(1), k.stride(0),
            k.stride(1), k.stride(2), mask.stride(0), nsplit, D=D, CHUNK=kn.ATTN_CHUNK,
            SPLITS=triton.next_power_of_2(nsplit), USE_PDL=False, NEWEST_AFTER_WAIT=call == 1)
        assert not cnt.any() and torch.equal(o1, o), ("attention one launch", call, B, H, Hkv, S)
    print("attention one launch", B, H, Hkv, S, "== two launches")
    # the public ops: eager launches take kn.ATTN_EAGER_CONFIG (128-slot tiles), PDL asked for and not applied
    for name, o2 in (("op attention", kn.decode_attention(q, k, v, mask, D ** -0.5, 2)),
                     ("op attention one launch", kn.decode_attention_one_launch(q, k, v, mask, D ** -0.5, cnt, 2))):
        err = rel(o2, ref)
        assert err < tol and not cnt.any(), (name, B, H, Hkv, S, err)
        print(name, B, H, Hkv, S, f"{err:.1e}")
print("ok")
"""


# Triton 3.6's interpreter (the device stack's) hands a scalar kernel argument over as a 1-element array, and
# `range(BLOCK_K, K, BLOCK_K)` then fails under NumPy >= 2.4 ("only 0-dimensional arrays can be converted to
# Python scalars", run 46); Triton 3.9 passes 0-d values. This kernel asks the installed pair directly.
LOOP_PROBE = r"""
import torch, triton, triton.language as tl


@triton.jit
def loop(y_ptr, n, STEP: tl.constexpr):
    acc = 0
    for i in range(STEP, n, STEP):
        acc += i
    tl.store(y_ptr, acc)


y = torch.zeros(1, dtype=torch.int32)
try:
    loop[(1,)](y, 10, STEP=2)
except Exception as e:  # the interpreter's own failure, reported to the test as a skip reason
    print(f"interpreter cannot loop over a scalar argument: {type(e).__name__}: {str(e)[:200]}")
else:
    print("ok" if int(y) == 2 + 4 + 6 + 8 else f"wrong loop result {int(y)}")
"""


@pytest.fixture(scope="module")
def interpreter_env() -> dict:
    """The environment that runs the kernels in Triton's interpreter, once LOOP_PROBE has shown that the
    installed interpreter can run them (asked once per module, not per dtype)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    probe = subprocess.run([sys.executable, "-c", LOOP_PROBE], env=env, capture_output=True, text=True,
                           timeout=120).stdout.strip()
    if probe.startswith("interpreter cannot"):
        import triton

        pytest.skip(f"Triton {triton.__version__}'s interpreter here: {probe} (the kernels themselves run on the "
                    "GPU in tests/test_compile.py)")
    assert probe == "ok", probe
    return env


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (the CPU torch build has none); the kernels run in Triton's "
                           "interpreter wherever triton is installed, and for real on a GPU")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_kernels_match_torch_in_the_interpreter(dtype, interpreter_env):
    env = interpreter_env
    r = subprocess.run([sys.executable, "-c", "import sys\n" + CHECK, dtype], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
