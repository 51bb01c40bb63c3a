"""Triton kernels (llama_fast/kernels/) against torch references, in Triton's interpreter on the CPU, and their
launch policy (pinned configs, the override hook, PDL modes).

The CPU torch build ships no Triton: there these tests skip, saying so. Where Triton is installed (a GPU
box, or `pip install triton` beside the CPU build) they run the real kernels' code on CPU tensors."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

CHECK = r"""
import torch, triton
import torch.nn.functional as F
import llama_fast.kernels as kn
from llama_fast.kernels import attention as at, configs, qkv_rope as qr
from llama_fast.kernels.gemv import (EPILOGUE_NONE, EPILOGUE_RESIDUAL_SS, EPILOGUE_SWIGLU, PROLOGUE_NONE,
                                     PROLOGUE_RMSNORM, SS_GROUP, _gemv_fused_kernel)

torch.manual_seed(0)
seen = []  # (form, n, K) of every eager launch that asked the override hook (None: keep the pinned config)
configs.CONFIG_OVERRIDE = lambda form, n, K: seen.append((form, n, K))
dt = getattr(torch, sys.argv[1])
tol = 1e-6 if dt == torch.float32 else 2e-3


def fused(x, w, g, res, ss, eps, prologue, epilogue, N):
    K = x.shape[1]
    y = torch.empty(1, N, dtype=x.dtype)
    ss_out = torch.full((triton.cdiv(N, SS_GROUP),), float("nan"))
    _gemv_fused_kernel.fn[(triton.cdiv(N, 16),)](x, w, y, g, res, ss, ss_out, N, K, ss.numel(), w.stride(0), eps,
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
    NONE, RES, SWI, RMS = PROLOGUE_NONE, EPILOGUE_RESIDUAL_SS, EPILOGUE_SWIGLU, PROLOGUE_RMSNORM
    y_res, ss_res = fused(x, w, x, res, x, 0.0, NONE, RES, N)
    ref_res = (res.float() + (x.float() @ w.float().T).to(dt).float()).to(dt)
    gate, up = (rmsnorm(x, g, 1e-5).float() @ w13.float().T).to(dt).chunk(2, dim=-1)
    checks = {
        "gemv": (fused(x, w, x, x, x, 0.0, NONE, EPILOGUE_NONE, N)[0], x.float() @ w.float().T),
        "rmsnorm": (fused(x, w, g, x, ss, 1e-5, RMS, EPILOGUE_NONE, N)[0], rmsnorm(x, g, 1e-5).float() @ w.float().T),
        "residual": (y_res, ref_res.float()),
        "ss_partials": (ss_res, F.pad(ref_res.float().pow(2), (0, 8 * ss_res.numel() - N)).view(-1, 8).sum(-1)),
        "swiglu": (fused(x, w13, g, x, ss, 1e-5, RMS, SWI, N)[0], (F.silu(gate.float()).to(dt) * up).float()),
    }
    # the public ops: eager launches take the pinned configs (configs.pinned_config), not the autotuner's
    checks["op gemv"] = (kn.gemv(x, w), checks["gemv"][1])
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
    qr._gemv_qkv_rope_kernel.fn[((H + 2 * Hkv) * (D // 16),)](
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
    nsplit = triton.cdiv(S, configs.ATTN_CHUNK)
    m, l, acc = torch.empty(B * H * nsplit), torch.empty(B * H * nsplit), torch.empty(B * H * nsplit, D)
    o = torch.empty(B, H, 1, D, dtype=dt)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask[:, None, None, :],
                                         enable_gqa=H != Hkv)
    outs = []
    for newest in (False, True):  # True: the PDL form's re-read of each chunk's newest attended row
        o = torch.empty(B, H, 1, D, dtype=dt)
        at._decode_attn_split_kernel[(B * H, nsplit)](q, k, v, mask, m, l, acc, S, H, H // Hkv, D ** -0.5,
                                                      q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                                                      k.stride(2), mask.stride(0), nsplit, D=D,
                                                      CHUNK=configs.ATTN_CHUNK, USE_PDL=False,
                                                      NEWEST_AFTER_WAIT=newest)
        at._decode_attn_combine_kernel[(B * H,)](m, l, acc, o, nsplit, D=D, SPLITS=triton.next_power_of_2(nsplit),
                                                 USE_PDL=False)
        err = rel(o, ref)
        assert err < tol, ("attention", newest, B, H, Hkv, S, err)
        print("attention", newest, B, H, Hkv, S, f"{err:.1e}")
        outs.append(o)
    assert torch.equal(outs[0], outs[1])
    cnt = torch.zeros(B * H, dtype=torch.int32)
    for call in range(2):  # the one-launch form leaves its counters at zero for the next call
        o1 = torch.empty(B, H, 1, D, dtype=dt)
        at._decode_attn_one_launch_kernel[(B * H, nsplit)](
            q, k, v, mask, m, l, acc, cnt, o1, S, H, H // Hkv, D ** -0.5, q.stride(0), q.stride(1), k.stride(0),
            k.stride(1), k.stride(2), mask.stride(0), nsplit, D=D, CHUNK=configs.ATTN_CHUNK,
            SPLITS=triton.next_power_of_2(nsplit), USE_PDL=False, NEWEST_AFTER_WAIT=call == 1)
        assert not cnt.any() and torch.equal(o1, o), ("attention one launch", call, B, H, Hkv, S)
    print("attention one launch", B, H, Hkv, S, "== two launches")
    # the public ops: eager launches take configs.ATTN_EAGER_CONFIG (128-slot tiles), PDL asked for and not applied
    for name, o2 in (("op attention", kn.decode_attention(q, k, v, mask, D ** -0.5, 2)),
                     ("op attention one launch", kn.decode_attention_one_launch(q, k, v, mask, D ** -0.5, cnt, 2))):
        err = rel(o2, ref)
        assert err < tol and not cnt.any(), (name, B, H, Hkv, S, err)
        print(name, B, H, Hkv, S, f"{err:.1e}")
# every op asked the override hook for its form's config, with its output rows and input width
assert {f for f, _, _ in seen} == {"gemv", "rmsnorm", "residual", "swiglu", "qkv_rope", "attention"}, seen
assert ("swiglu", 96, 300) in seen and ("residual", 37, 512) in seen and ("attention", 300, 64) in seen, seen
print("ok")
"""


# Triton 3.6's interpreter (the device stack's) hands a scalar kernel argument over as a 1-element array, and
# `range(BLOCK_K, K, BLOCK_K)` then fails under NumPy >= 2.4 ("only 0-dimensional arrays can be converted to
# Python scalars"); Triton 3.9 passes 0-d values. This kernel asks the installed pair directly.
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


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed (the CPU torch build has none): the launch "
                                         "policy lives beside the kernels")


@needs_triton
def test_pinned_configs_and_the_override_hook(monkeypatch):
    """Eager launches take one pinned config per form; CONFIG_OVERRIDE replaces it for the forms it answers;
    inside torch.compile or with LLAMA_FAST_GEMV_AUTOTUNE=1 the kernels' own search applies (None)."""
    from llama_fast.kernels import configs

    monkeypatch.delenv("LLAMA_FAST_GEMV_AUTOTUNE", raising=False)
    monkeypatch.setattr(configs, "CONFIG_OVERRIDE", None)
    assert configs.pinned_config("residual", 4096, 11008) == {"BLOCK_N": 8, "BLOCK_K": 1024, "num_warps": 8,
                                                              "num_stages": 3}
    assert configs.pinned_config("swiglu", 11008, 4096)["num_stages"] == 2
    assert configs.pinned_config("gemv", 12288, 4096)["BLOCK_N"] == 8
    assert configs.pinned_config("rmsnorm", 32000, 4096)["BLOCK_N"] == 16  # the head
    assert configs.pinned_config("qkv_rope", 12288, 4096) == configs.QKV_ROPE_CONFIG
    assert configs.pinned_config("attention", 1200, 128) == configs.ATTN_EAGER_CONFIG
    # every pinned GEMV tile makes whole sum-of-squares groups (the residual epilogue writes one per 8 rows)
    for form in ("gemv", "rmsnorm", "residual", "swiglu"):
        for n in (4096, 11008, 32000):
            assert configs.pinned_config(form, n, 4096)["BLOCK_N"] % 8 == 0

    wide = {"BLOCK_N": 16, "BLOCK_K": 256, "num_warps": 4, "num_stages": 2}
    asked = []

    def override(form, n, K):
        asked.append((form, n, K))
        return wide if (form, K) == ("residual", 4096) else None

    monkeypatch.setattr(configs, "CONFIG_OVERRIDE", override)
    assert configs.pinned_config("residual", 4096, 4096) == wide
    assert configs.pinned_config("residual", 4096, 11008)["BLOCK_K"] == 1024  # not answered: pinned
    assert configs.pinned_config("attention", 1200, 128) == configs.ATTN_EAGER_CONFIG
    assert asked == [("residual", 4096, 4096), ("residual", 4096, 11008), ("attention", 1200, 128)]

    monkeypatch.setenv("LLAMA_FAST_GEMV_AUTOTUNE", "1")
    assert configs.pinned_config("residual", 4096, 4096) is None
    monkeypatch.delenv("LLAMA_FAST_GEMV_AUTOTUNE")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert configs.pinned_config("swiglu", 11008, 4096) is None
    from llama_fast.kernels.attention import _attn_config

    assert _attn_config(1200, 128) == (configs.ATTN_CHUNK, configs.ATTN_COMPILED_WARPS)


@needs_triton
def test_pdl_modes_the_model_asks_for():
    """model.pdl_mode / gemv_pdl_mode return the kernels' PDL_* values (model.py cannot import them: Triton is
    imported only where the kernels run); the attention refuses the early trigger it no longer has, and no
    kernel gets PDL off a GPU."""
    import llama_fast.kernels as kn
    from llama_fast.kernels.pdl import launch_kwargs, use_pdl
    from llama_fast.model import ForwardOptions, gemv_pdl_mode, pdl_mode

    fastest = ForwardOptions(pdl=True, pdl_gemv_early=True)
    assert (pdl_mode(fastest), gemv_pdl_mode(fastest)) == (kn.PDL_TRIGGER_LATE, kn.PDL_TRIGGER_EARLY)
    assert gemv_pdl_mode(ForwardOptions(pdl=True)) == kn.PDL_TRIGGER_LATE
    assert pdl_mode(ForwardOptions()) == gemv_pdl_mode(ForwardOptions(pdl_gemv_early=True)) == kn.PDL_OFF
    x = torch.zeros(1, 8)
    assert use_pdl(x, kn.PDL_TRIGGER_LATE) == kn.PDL_OFF and launch_kwargs(kn.PDL_OFF) == {}
    assert launch_kwargs(kn.PDL_TRIGGER_EARLY) == {"launch_pdl": True}
    q, k = torch.zeros(1, 2, 1, 16), torch.zeros(1, 2, 8, 16)
    mask = torch.ones(1, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="PDL_TRIGGER_LATE"):
        kn.decode_attention(q, k, k, mask, 0.25, kn.PDL_TRIGGER_EARLY)
    with pytest.raises(ValueError, match="PDL_TRIGGER_LATE"):
        kn.decode_attention_one_launch(q, k, k, mask, 0.25, torch.zeros(2, dtype=torch.int32), kn.PDL_TRIGGER_EARLY)
