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


def fused(x, w, g, res, eps, prologue, K):
    N = w.shape[0]
    y = torch.empty(1, N, dtype=x.dtype)
    kn._gemv_fused_kernel.fn[(triton.cdiv(N, 16),)](x, w, y, g, res, N, K, w.stride(0), eps, PROLOGUE=prologue,
                                                     HAS_RES=res is not x, BLOCK_N=16, BLOCK_K=256)
    return y


def plain(x, w):
    return fused(x, w, x, x, 0.0, kn.PROLOGUE_NONE, w.shape[1])


def rmsnorm(x, g, eps):  # transformers' LlamaRMSNorm
    xf = x.float()
    return g * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rel(y, ref):
    return ((y.float() - ref).norm() / ref.norm()).item()


for N, K in [(96, 300), (37, 512), (64, 1000)]:  # tails in both N and K
    x = torch.randn(1, K).to(dt)
    g = (1 + 0.1 * torch.randn(K)).to(dt)
    w = (0.05 * torch.randn(N, K)).to(dt)
    res = torch.randn(1, N).to(dt)
    gu = torch.randn(1, 2 * K).to(dt)
    checks = {
        "gemv": (plain(x, w), x.float() @ w.float().T),
        "rmsnorm": (fused(x, w, g, x, 1e-5, kn.PROLOGUE_RMSNORM, K), rmsnorm(x, g, 1e-5).float() @ w.float().T),
        "residual": (fused(x, w, x, res, 0.0, kn.PROLOGUE_NONE, K),
                     res.float() + (x.float() @ w.float().T).to(dt).float()),
        "silu_mul": (fused(gu, w, gu, res, 0.0, kn.PROLOGUE_SILU_MUL, K),
                     res.float() + ((F.silu(gu[:, :K]) * gu[:, K:]).float() @ w.float().T).to(dt).float()),
    }
    for name, (y, ref) in checks.items():
        err = rel(y, ref)
        assert err < tol, (name, N, K, err)
        print(name, N, K, f"{err:.1e}")
for B, H, Hkv, S, D, pos, pad in [(1, 4, 4, 300, 64, 257, [0]), (2, 8, 2, 200, 32, 130, [0, 17]),
                                  (1, 2, 1, 64, 16, 0, [0])]:  # MHA over 3 chunks; GQA + left pad; one key
    q, k, v = torch.randn(B, H, 1, D).to(dt), torch.randn(B, Hkv, S, D).to(dt), torch.randn(B, Hkv, S, D).to(dt)
    slots = torch.arange(S)
    mask = (slots[None, :] <= pos) & (slots[None, :] >= torch.tensor(pad)[:, None])  # (B, S)
    nsplit = triton.cdiv(S, kn.ATTN_CHUNK)
    m, l, acc = torch.empty(B * H * nsplit), torch.empty(B * H * nsplit), torch.empty(B * H * nsplit, D)
    o = torch.empty(B, H, 1, D, dtype=dt)
    kn._decode_attn_split_kernel[(B * H, nsplit)](q, k, v, mask, m, l, acc, S, H, H // Hkv, D ** -0.5, q.stride(0),
                                                  q.stride(1), k.stride(0), k.stride(1), k.stride(2),
                                                  mask.stride(0), nsplit, D=D, CHUNK=kn.ATTN_CHUNK, BLOCK_S=32)
    kn._decode_attn_combine_kernel[(B * H,)](m, l, acc, o, nsplit, D=D, SPLITS=triton.next_power_of_2(nsplit))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask[:, None, None, :],
                                         enable_gqa=H != Hkv)
    err = rel(o, ref)
    assert err < tol, ("attention", B, H, Hkv, S, err)
    print("attention", B, H, Hkv, S, f"{err:.1e}")
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (the CPU torch build has none); the kernels run in Triton's "
                           "interpreter wherever triton is installed, and for real on a GPU")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_kernels_match_torch_in_the_interpreter(dtype):
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", "import sys\n" + CHECK, dtype], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
