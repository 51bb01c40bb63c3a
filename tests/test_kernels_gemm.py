"""The small-M decode GEMM (llama_fast/kernels/gemm.py) against torch references in Triton's interpreter on the CPU
(every form, rows 2..64 with N and K tails, split-K on and off; int8 and int4 weights at groups 32 / 64 / 128
against dequantize-then-matmul), its launch policy (row buckets, split-K choice, shared memory of the pinned
configs), and its wiring: ForwardOptions.small_m_gemm routes a model's calls of 2..64 rows through it (the decode
of a tiny model in the interpreter, dense or quantized, matches the torch path) behind the fused-gemm variant,
which leaves the ablation table and the fastest path as they are."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llama_fast import harness

REPO = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed (the CPU torch build has none); the kernels run in "
                                         "Triton's interpreter wherever triton is installed, and for real on a GPU")

# the two checks' shared helpers (each check runs as its own interpreter process)
HELPERS = r"""
def rel(y, ref):
    return ((y.double() - ref).norm() / ref.norm()).item()


def rmsnorm(x, g, eps):  # transformers' LlamaRMSNorm
    xf = x.float()
    return g * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
"""

GEMM_CHECK = r"""
import sys
import torch
import torch.nn.functional as F
from llama_fast.kernels import small_m_gemm, small_m_gemm_residual, small_m_gemm_swiglu

torch.manual_seed(0)
dt = getattr(torch, sys.argv[1])
tol = 1e-6 if dt == torch.float32 else 2e-3


{HELPERS}

ms = [2, 3, 16, 17, 64] if dt == torch.float32 else [3, 17]
for M in ms:
    for N, K in [(96, 300), (37, 520)]:  # tails in N (37 < BLOCK_N) and K (300, 520: no multiple of 64 or 128)
        x = torch.randn(M, K).to(dt)
        w = (0.05 * torch.randn(N, K)).to(dt)
        w13 = (0.05 * torch.randn(2 * N, K)).to(dt)
        res = torch.randn(M, N).to(dt)
        g = (1 + 0.1 * torch.randn(K)).to(dt)
        rstd = torch.rsqrt(x.float().pow(2).mean(-1) + 1e-5)
        h = rmsnorm(x, g, 1e-5)
        gate, up = (x.double() @ w13.double().T).to(dt).chunk(2, dim=-1)
        ngate, nup = (h.double() @ w13.double().T).to(dt).chunk(2, dim=-1)
        refs = {"gemm": x.double() @ w.double().T,
                "rmsnorm": h.double() @ w.double().T,
                "residual": (res.double() + (x.double() @ w.double().T).to(dt).double()),
                "swiglu": (F.silu(gate.float()).to(dt) * up).double(),
                "rmsnorm swiglu": (F.silu(ngate.float()).to(dt) * nup).double()}
        for split in (1, 3, 0):  # no split; three K splits (the fixed-order reduce); the op's own choice
            outs = {"gemm": small_m_gemm(x, w, split_k=split),
                    "rmsnorm": small_m_gemm(x, w, rstd, g, split_k=split),
                    "residual": small_m_gemm_residual(x, w, res, split_k=split),
                    "swiglu": small_m_gemm_swiglu(x, w13, split_k=split),
                    "rmsnorm swiglu": small_m_gemm_swiglu(x, w13, rstd, g, split_k=split)}
            for name, y in outs.items():
                assert y.dtype == dt and y.shape == refs[name].shape, (name, y.shape)
                err = rel(y, refs[name])
                assert err < tol, (name, M, N, K, split, err)
                print(f"{name} M={M} N={N} K={K} split={split}: {err:.1e}")
            # the split-K reduce runs in a fixed order: the same bits on every call
            assert torch.equal(small_m_gemm_residual(x, w, res, split_k=split), outs["residual"])
print("ok")
"""

# quantized weights (llama_fast/quant.py's formats) against dequantize-then-matmul: quant.dequantize_int8 /
# dequantize_int4 give the weight in the model dtype, then x @ W^T in float64. int8's N/K tails as dense (K a
# multiple of 4, dequant.weight_format); int4's K a multiple of the group with a tail against BLOCK_K where the
# group allows one. The pinned configs' BLOCK_K (128 here) is a multiple of every group (2 or 4 groups per tile
# at group 64 / 32); a second pass with BLOCK_K 32 takes the other case (the tile a part of a group of 64 or 128,
# K splits inside a group).
QGEMM_CHECK = r"""
import sys
import torch
import torch.nn.functional as F
from llama_fast import quant
from llama_fast.kernels import gemm as gm
from llama_fast.kernels import small_m_gemm, small_m_gemm_residual, small_m_gemm_swiglu

torch.manual_seed(0)
dt = getattr(torch, sys.argv[1])
scheme = quant.parse_scheme(sys.argv[2])
tol = 1e-6 if dt == torch.float32 else 2e-3


{HELPERS}

def quantized(w):  # (op arguments, the dequantized weight in dt)
    if scheme.bits == 8:
        q, s = quant.quantize_int8(w)
        return dict(w=q, scales=s), quant.dequantize_int8(q, s)
    q, s, o = quant.quantize_int4(w, scheme.group)
    return dict(w=q, scales=s, offsets=o, group=scheme.group), quant.dequantize_int4(q, s, o)


G = scheme.group or 1
# int4: K 160 = 1.25 tiles of 128 at group 32, 192 = 1.5 tiles at group 64; 384 = 3 tiles at group 128
shapes = [(96, 300), (37, 520)] if scheme.bits == 8 else [(96, {32: 160, 64: 192, 128: 384}[G]), (37, 2 * G)]
passes = [("pinned", {}), ("BLOCK_K 32", {"BLOCK_K": 32})]
pinned_configs = {id(t): dict(t) for t in (gm.GEMM_QUANT_CONFIGS, gm.GEMM_INT4_CONFIGS)}
checked = expected = 0
for label, change in passes:
    for table in (gm.GEMM_QUANT_CONFIGS, gm.GEMM_INT4_CONFIGS):
        for key in list(table):  # in every bucket these rows use
            table[key] = {**pinned_configs[id(table)][key], **change}
    rows = [2, 3, 16, 17] if label == "pinned" else [3, 17]
    expected += 5 * 2 * 2 * len(rows)
    for M in rows:
        for N, K in shapes:
            x = torch.randn(M, K).to(dt)
            w, W = quantized((0.05 * torch.randn(N, K)).to(dt))
            w13, W13 = quantized((0.05 * torch.randn(2 * N, K)).to(dt))
            res = torch.randn(M, N).to(dt)
            g = (1 + 0.1 * torch.randn(K)).to(dt)
            rstd = torch.rsqrt(x.float().pow(2).mean(-1) + 1e-5)
            h = rmsnorm(x, g, 1e-5)
            Wd, W13d = W.double(), W13.double()
            gate, up = (x.double() @ W13d.T).to(dt).chunk(2, dim=-1)
            ngate, nup = (h.double() @ W13d.T).to(dt).chunk(2, dim=-1)
            refs = {"gemm": x.double() @ Wd.T,
                    "rmsnorm": h.double() @ Wd.T,
                    "residual": (res.double() + (x.double() @ Wd.T).to(dt).double()),
                    "swiglu": (F.silu(gate.float()).to(dt) * up).double(),
                    "rmsnorm swiglu": (F.silu(ngate.float()).to(dt) * nup).double()}
            q, q13 = dict(w), dict(w13)
            wq, w13q = q.pop("w"), q13.pop("w")
            for split in (1, 3):  # split-K off; on (3 or fewer splits: the K tiles there are)
                outs = {"gemm": small_m_gemm(x, wq, split_k=split, **q),
                        "rmsnorm": small_m_gemm(x, wq, rstd, g, split_k=split, **q),
                        "residual": small_m_gemm_residual(x, wq, res, split_k=split, **q),
                        "swiglu": small_m_gemm_swiglu(x, w13q, split_k=split, **q13),
                        "rmsnorm swiglu": small_m_gemm_swiglu(x, w13q, rstd, g, split_k=split, **q13)}
                for name, y in outs.items():
                    assert y.dtype == dt and y.shape == refs[name].shape, (name, y.shape)
                    err = rel(y, refs[name])
                    assert err < tol, (label, name, M, N, K, split, err)
                    checked += 1
                worst = max(rel(y, refs[n]) for n, y in outs.items())
                print(f"{label} M={M} N={N} K={K} split={split}: max {worst:.1e}")
assert checked == expected == 5 * 2 * 2 * (4 + 2 * (len(passes) - 1)), (checked, expected)
print("ok")
"""

# a tiny model's prefill (3 x 8 = 24 rows) and batch-3 decode steps with the small-M GEMM in Triton's interpreter
# against the torch path, fp32; the block path (RMSNorm prologue, SwiGLU and residual epilogues) where the layers
# allow it, model.linear's plain GEMM (the head; with biases, every projection) otherwise
MODEL_CHECK = r"""
import sys
import torch
import llama_fast.kernels as kn
from llama_fast import model as model_module
from llama_fast.model import ForwardOptions
from core_helpers import TINY_CONFIGS, count_calls, make_hf, ours_from_hf
from test_model import _ids, _prefill_then_decode

calls = count_calls(kn, ("small_m_gemm", "small_m_gemm_residual", "small_m_gemm_swiglu"))
cfg = TINY_CONFIGS[sys.argv[1]]
model = ours_from_hf(make_hf(cfg, seed=6), cfg).eval()
if len(sys.argv) > 2:  # quantized layers (the tiny K of 64 and 96 are multiples of every group up to 32)
    from llama_fast.quant import quant_linears, quantize_model_

    quantize_model_(model, sys.argv[2]).requires_grad_(False)
    groups = {m.group for m in quant_linears(model).values()}
    assert len(quant_linears(model)) == 4 * cfg.n_layers + (not cfg.tie_word_embeddings), quant_linears(model)
    assert groups == ({None} if sys.argv[2] == "int8" else {int(sys.argv[2].rpartition("g")[2])}), groups
    # every call hands the kernel the packed weight and its scales
    for name in ("small_m_gemm", "small_m_gemm_residual", "small_m_gemm_swiglu"):
        def packed(*args, _op=getattr(kn, name), **kwargs):
            assert args[1].dtype in (torch.int8, torch.uint8) and kwargs["scales"] is not None, args[1].dtype
            return _op(*args, **kwargs)
        setattr(kn, name, packed)
ids = _ids(cfg, B=3, T=11, seed=6)
with torch.no_grad():
    model.options = ForwardOptions()
    model_module.triton_kernels_apply = lambda x: False  # the reference: the torch path
    ref = _prefill_then_decode(model, ids, prefill_len=8)
    assert not calls
    model_module.triton_kernels_apply = lambda x: True  # the kernels run on the CPU, in Triton's interpreter
    # dense weights take the GEMM when ForwardOptions asks; quantized ones whenever the kernels apply (layer(x)
    # would dequantize each whole weight on every call)
    model.options = ForwardOptions() if len(sys.argv) > 2 else ForwardOptions(small_m_gemm=True)
    got = _prefill_then_decode(model, ids, prefill_len=8)
# three decode steps of 3 rows, and the prefill's 3 x 8 rows where they are within the GEMM's range (dense weights
# stop at GEMM_DENSE_MAX_ROWS: cuBLAS was faster past it)
forwards = 3 + (3 * 8 <= (kn.GEMM_MAX_ROWS if len(sys.argv) > 2 else kn.GEMM_DENSE_MAX_ROWS))
blocks = forwards * cfg.n_layers
if cfg.mlp_bias or cfg.attention_bias:  # no fused block: every projection and the head through model.linear
    assert calls == {"small_m_gemm": 4 * blocks + forwards}, calls
else:  # wqkv (+ RMSNorm), wo and w2 (+ residual), w13 (+ RMSNorm, SwiGLU) per block; the head in model.linear
    assert calls == {"small_m_gemm": blocks + forwards, "small_m_gemm_residual": 2 * blocks,
                     "small_m_gemm_swiglu": blocks}, calls
assert ref.abs().max() > 0.5
torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
print(sys.argv[1], (got - ref).abs().max().item())
print("ok")
"""


# The kernels-only decode step's forms (gemm.small_m_qkv_rope, small_m_residual_ss, small_m_swiglu_ss,
# small_m_rmsnorm_ss) against torch: RMSNorm from sum-of-squares partials, RoPE with each row's own tables (left
# padding) and the K/V cache write (only row m's slot at pos, nothing else), the partials the residual forms write
# (one K split, and a split summed in the GEMM: SERIAL), dense or quantized weights (argv[2]: none, int8,
# int4:g32); the split's arrival counts are left 0. argv[3] "gemv_rows": the same four ops of kernels/gemv_rows.py
# (the batch-1 GEMV's loop over 2-4 rows), at the shapes of 4 rows or fewer.
STEP_CHECK = r"""
import sys
import torch
import torch.nn.functional as F
from llama_fast import quant
from llama_fast.kernels import gemm, gemv_rows
from llama_fast.model import apply_rope

rows_form = len(sys.argv) > 3 and sys.argv[3] == "gemv_rows"
gm = gemv_rows if rows_form else gemm
max_rows = 4 if rows_form else 64

torch.manual_seed(0)
dt = getattr(torch, sys.argv[1])
tol = 1e-6 if dt == torch.float32 else 2e-3
scheme = None if sys.argv[2] == "none" else quant.parse_scheme(sys.argv[2])
if rows_form and scheme is not None and scheme.bits == 8 and dt == torch.float32:
    # the int8 rows take 128 sum x out of sum (q + 128) x (dequant.int8_fma, as the batch-1 GEMV): fp32 cancels
    # a few bits over K = 8320 (1.6e-6 measured)
    tol = 4e-6


{HELPERS}

def weight(n, k):  # (op arguments, the weight as the kernel sees it in dt)
    w = (0.05 * torch.randn(n, k)).to(dt)
    if scheme is None:
        return dict(w=w), w
    if scheme.bits == 8:
        q, s = quant.quantize_int8(w)
        return dict(w=q, scales=s), quant.dequantize_int8(q, s)
    q, s, o = quant.quantize_int4(w, scheme.group)
    return dict(w=q, scales=s, offsets=o, group=scheme.group), quant.dequantize_int4(q, s, o)


def parts(t, n):  # (M, n) partials of each row's sum of squares, as a kernel before would hand them over
    return torch.stack([c.float().pow(2).sum(-1) for c in t.chunk(n, dim=-1)], dim=-1).contiguous()


eps = 1e-5
# (rows, heads, KV heads, head dim, K): GQA, MHA, 16 rows, a head dim of 48 (the RoPE tile halves to 16), and a K
# long enough for the interpreter's nominal 8 SMs to split it (the RoPE then by the tile's last split)
for M, H, HKV, D, K in [(3, 4, 2, 32, 96), (16, 2, 2, 64, 128), (2, 3, 1, 48, 64), (3, 2, 1, 32, 4096),
                        (2, 2, 1, 32, 256)]:
    # int4 at group 128 takes K of 4096 and 256 only
    if M > max_rows or (scheme is not None and scheme.group and K % scheme.group):
        continue
    B, S, pos = M + 1, 9, 6  # the cache has a row more than the step (left untouched)
    x = torch.randn(M, K).to(dt)
    g = (1 + 0.1 * torch.randn(K)).to(dt)
    args, wd = weight((H + 2 * HKV) * D, K)
    h = rmsnorm(x, g, eps)
    qkv = (h.double() @ wd.double().T).to(dt)  # the projection, rounded
    # each row its own position (left padding: pad_len[m] = m), tables as model.setup_caches builds them
    ang = (pos - torch.arange(M)).clamp(min=0).float()[:, None] * torch.rand(D // 2)[None, :]
    ang = torch.cat((ang, ang), dim=-1)
    sign = torch.cat((-torch.ones(D // 2), torch.ones(D // 2)))
    cos, sin = ang.cos().to(dt), (ang.sin() * sign).to(dt)
    q, k, v = qkv.split([H * D, HKV * D, HKV * D], dim=-1)
    rope = (cos[:, None, None], sin[:, None, None])  # (M, 1, 1, D)
    q_ref = apply_rope(q.view(M, H, 1, D), *rope, use_cat=False).reshape(M, H * D)
    k_ref = apply_rope(k.view(M, HKV, 1, D), *rope, use_cat=False)[:, :, 0]
    kc = torch.zeros(B, HKV, S, D, dtype=dt)
    vc = torch.zeros(B, HKV, S, D, dtype=dt)
    w = args.pop("w")
    got = gm.small_m_qkv_rope(x, w, parts(x, 3), g, eps, cos, sin, kc, vc, torch.tensor([pos]), H, **args)
    assert got.shape == (M, H * D) and got.dtype == dt, got.shape
    for name, y, ref in (("q", got, q_ref), ("k", kc[:M, :, pos], k_ref), ("v", vc[:M, :, pos], v.view(M, HKV, D))):
        err = rel(y, ref.double())
        assert err < tol, (name, M, H, HKV, D, err)
    kc[:M, :, pos] = 0
    vc[:M, :, pos] = 0
    assert not kc.any() and not vc.any(), "a write outside the rows' slots"
    print(f"qkv+rope M={M} H={H}/{HKV} D={D} K={K}: ok")

# one K split; K long enough for the interpreter's split; 4 rows (the rows form: a tile of 8 rows and K tiles)
for M, N, K in [(3, 96, 96), (5, 40, 2048), (4, 40, 8320)]:
    if M > max_rows or (scheme is not None and scheme.group and K % scheme.group):
        continue
    x = torch.randn(M, K).to(dt)
    res = torch.randn(M, N).to(dt)
    args, wd = weight(N, K)
    w = args.pop("w")
    y, ss = gm.small_m_residual_ss(x, w, res, **args)
    ref = res.double() + (x.double() @ wd.double().T).to(dt).double()
    assert rel(y, ref) < tol, (M, N, K, rel(y, ref))
    assert ss.shape[0] == M and ss.dtype == torch.float32
    torch.testing.assert_close(ss.sum(-1), y.float().pow(2).sum(-1), rtol=1e-5, atol=1e-5)
    print(f"residual+ss M={M} N={N} K={K} partials={ss.shape[1]}: ok")
    g = (1 + 0.1 * torch.randn(K)).to(dt)
    h = rmsnorm(x, g, eps)
    args13, w13d = weight(2 * N, K)
    w13 = args13.pop("w")
    gate, up = (h.double() @ w13d.double().T).to(dt).chunk(2, dim=-1)
    act = gm.small_m_swiglu_ss(x, w13, parts(x, 4), g, eps, **args13)
    assert rel(act, (F.silu(gate.float()).to(dt) * up).double()) < tol, M
    head = gm.small_m_rmsnorm_ss(x, w, parts(x, 1), g, eps, **args)
    assert rel(head, h.double() @ wd.double().T) < tol, M
    print(f"swiglu / head from partials M={M}: ok")
if not rows_form:
    assert gm._COUNTERS and all(not c.any() for c in gm._COUNTERS.values()), "a split ran, its counts are back to 0"
print("ok")
"""

# The kernels-only decode step of a tiny model (ForwardOptions.small_m_kernels: Transformer._small_m_decode) against
# the torch path, left-padded rows of unequal prompts included; argv[2]: quantized layers, argv[3] "no-rows":
# ForwardOptions.gemv_rows off, argv[4]: the batch (default 3).
STEP_MODEL_CHECK = r"""
import sys
import torch
from llama_fast import model as model_module
from llama_fast.kernels import gemm as gm
from llama_fast.model import ForwardOptions
from core_helpers import TINY_CONFIGS, count_calls, make_hf, ours_from_hf
from test_model import _ids

from llama_fast.kernels import gemv_rows
from llama_fast.kernels.dequant import WFMT_INT4, WFMT_INT8

OPS = ("small_m_qkv_rope", "small_m_residual_ss", "small_m_swiglu_ss", "small_m_rmsnorm_ss")
gemm_calls, rows_calls = count_calls(gm, OPS), count_calls(gemv_rows, OPS)
cfg = TINY_CONFIGS[sys.argv[1]]
rows_on = len(sys.argv) < 4 or sys.argv[3] != "no-rows"  # ForwardOptions.gemv_rows
model = ours_from_hf(make_hf(cfg, seed=6), cfg).eval()
if len(sys.argv) > 2:
    from llama_fast.quant import quantize_model_

    quantize_model_(model, sys.argv[2]).requires_grad_(False)
B, T, P = int(sys.argv[4]) if len(sys.argv) > 4 else 3, 11, 8
ids = _ids(cfg, B=B, T=T, seed=6)
PADS = [0, 2, 1][:B]


def run():  # prefill of P tokens (rows 1 and 2 left-padded by 2 and 1), then a decode step per remaining token
    model.setup_caches(B, T + 3)
    model.set_padding(torch.tensor(PADS))
    outs = [model(ids[:, :P], torch.arange(P), 0)]
    outs += [model(ids[:, t:t + 1], torch.tensor([t]), 0) for t in range(P, T)]
    return torch.cat(outs, dim=1)[:, :, :]


with torch.no_grad():
    model.options = ForwardOptions()
    model_module.triton_kernels_apply = lambda x: False  # the reference: the torch path
    ref = run()
    assert not gemm_calls and not rows_calls
    model_module.triton_kernels_apply = lambda x: True  # the kernels run on the CPU, in Triton's interpreter
    model.options = ForwardOptions(small_m_gemm=True, decode_attention=True, small_m_kernels=True,
                                   gemv_rows=rows_on)
    got = run()
steps = T - P
quantized = len(sys.argv) > 2
calls = {k: gemm_calls.get(k, 0) + rows_calls.get(k, 0) for k in OPS}
calls = {k: v for k, v in calls.items() if v}
# the rows GEMV takes the block's quantized projections with the option, up to its rows (ROWS_MAX), else the GEMM
rows_fit = quantized and rows_on and B <= gemv_rows.ROWS_MAX[WFMT_INT8 if sys.argv[2] == "int8" else WFMT_INT4]
assert calls == {"small_m_qkv_rope": steps * cfg.n_layers, "small_m_residual_ss": 2 * steps * cfg.n_layers,
                 "small_m_swiglu_ss": steps * cfg.n_layers, "small_m_rmsnorm_ss": steps}, calls
block_rows = {k: v for k, v in rows_calls.items() if k != "small_m_rmsnorm_ss"}
assert bool(block_rows) == rows_fit, rows_calls
assert not block_rows or block_rows == {k: v for k, v in calls.items() if k != "small_m_rmsnorm_ss"}
# the padded rows' pad positions are garbage on both paths; the real ones must agree
real = torch.arange(T)[None, :] >= torch.tensor(PADS)[:, None]
assert ref.abs().max() > 0.5
torch.testing.assert_close(got[real], ref[real], rtol=1e-4, atol=1e-4)
print(sys.argv[1], (got - ref)[real].abs().max().item())
print("ok")
"""


def run_interpreted(script: str, *args: str) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    r = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


@needs_triton
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_small_m_gemm_matches_torch_in_the_interpreter(dtype):
    run_interpreted(GEMM_CHECK.replace("{HELPERS}", HELPERS), dtype)


@needs_triton
@pytest.mark.parametrize("scheme", ["int8", "int4:g32", "int4:g64", "int4:g128"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_small_m_gemm_quantized_matches_dequantize_then_matmul_in_the_interpreter(dtype, scheme):
    run_interpreted(QGEMM_CHECK.replace("{HELPERS}", HELPERS), dtype, scheme)


@needs_triton
@pytest.mark.parametrize("cfg_name", ["gqa", "head-dim-48", "mlp-bias"])
def test_small_m_decode_through_the_gemm_in_the_interpreter(cfg_name):
    run_interpreted(MODEL_CHECK, cfg_name)


@needs_triton
@pytest.mark.parametrize("scheme", ["int8", "int4:g32"])
def test_quantized_small_m_decode_through_the_gemm_in_the_interpreter(scheme):
    """The fused-gemm path with quantized layers (tiny model, batch 3): the block's four GEMMs and the head take
    the packed weights and match the torch path (QuantLinear: dequantize, then F.linear)."""
    run_interpreted(MODEL_CHECK, "gqa", scheme)


@needs_triton
@pytest.mark.parametrize("scheme", ["none", "int8", "int4:g32"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_kernels_only_step_forms_match_torch_in_the_interpreter(dtype, scheme):
    run_interpreted(STEP_CHECK.replace("{HELPERS}", HELPERS), dtype, scheme)


@needs_triton
@pytest.mark.parametrize("scheme", ["int8", "int4:g32", "int4:g128"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_rows_gemv_step_forms_match_torch_in_the_interpreter(dtype, scheme):
    """kernels/gemv_rows.py's four ops (2-4 rows, quantized weights) against the same torch references."""
    run_interpreted(STEP_CHECK.replace("{HELPERS}", HELPERS), dtype, scheme, "gemv_rows")


@needs_triton
@pytest.mark.parametrize("cfg_name", ["gqa", "head-dim-32"])
def test_kernels_only_decode_step_matches_torch_in_the_interpreter(cfg_name):
    run_interpreted(STEP_MODEL_CHECK, cfg_name)


@needs_triton
@pytest.mark.parametrize("rows, batch", [("rows", "2"), ("no-rows", "2"), ("rows", "3")])
@pytest.mark.parametrize("scheme", ["int4:g32", "int8"])
def test_quantized_kernels_only_decode_step_matches_torch_in_the_interpreter(scheme, rows, batch):
    """Quantized layers take the kernels-only step, their projections on the rows GEMV (gemv_rows.py) up to its
    rows (2); past them, or with ForwardOptions.gemv_rows off, the GEMM."""
    run_interpreted(STEP_MODEL_CHECK, "gqa", scheme, rows, batch)


@needs_triton
def test_kernels_only_step_applies_where_its_kernels_can_run(monkeypatch):
    """Transformer.small_m_kernels_apply: with the option, 2..16 rows of a fusable model (dense; int4 up to 64) whose
    head dim the decode attention takes (int8 up to 16 rows, on the rows GEMV or the GEMM); not at batch 1, past
    the GEMM's rows, with biases, under tensor parallelism, for a head dim of 48, without the option, or inside a
    torch.compile trace."""
    from dataclasses import replace

    from core_helpers import TINY_CONFIGS
    from llama_fast import model as model_module
    from llama_fast.model import Transformer
    from llama_fast.quant import quantize_model_

    monkeypatch.setattr(model_module, "triton_kernels_apply", lambda x: True)
    opts = harness.VARIANTS["fused-gemm-kernels"].options

    def applies(name, rows, options=opts, scheme=None, tp=False):
        m = Transformer(TINY_CONFIGS[name]).eval()
        if scheme:
            quantize_model_(m, scheme)
        if tp:
            m.layers[0].tp_group = object()
        m.options = options
        return m.small_m_kernels_apply(torch.zeros(rows, 1, m.config.dim))

    assert applies("gqa", 2) and applies("gqa", 16) and applies("head-dim-32", 3)
    assert not applies("gqa", 1) and not applies("gqa", 17)
    assert applies("gqa", 64, scheme="int4:g32") and not applies("gqa", 65, scheme="int4:g32")
    assert applies("gqa", 2, scheme="int8") and applies("gqa", 2, replace(opts, gemv_rows=False), "int8")
    assert applies("gqa", 3, scheme="int8") and applies("gqa", 16, scheme="int8")
    assert not applies("gqa", 17, scheme="int8")  # past 16 rows int8 keeps the compiled step
    assert not applies("mlp-bias", 8) and not applies("head-dim-48", 8) and not applies("gqa", 8, tp=True)
    assert not applies("gqa", 8, replace(opts, small_m_kernels=False))
    assert not applies("gqa", 8, replace(opts, decode_attention=False))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not applies("gqa", 8)


@needs_triton
def test_launch_policy():
    from llama_fast.kernels import gemm as gm
    
    assert [gm.block_m(m) for m in (2, 3, 16, 17, 32, 33, 64)] == [16, 16, 16, 32, 32, 64, 64]
    for (bm, form), cfg in gm.GEMM_CONFIGS.items():  # each fits the ~100 KB of shared memory of an sm_86 card
        tiles = (2 if form == "swiglu" else 1) * cfg["BLOCK_N"] + bm
        assert tiles * cfg["BLOCK_K"] * 2 * cfg["num_stages"] <= 96 * 1024, (bm, form)
        assert cfg["BLOCK_N"] >= 16 and cfg["BLOCK_K"] >= 16  # tl.dot's smallest tile
    assert gm.GEMM_QUANT_CONFIGS.keys() == gm.GEMM_CONFIGS.keys()
    for (bm, form), cfg in gm.GEMM_QUANT_CONFIGS.items():  # int8 weights: 1 byte each (int4: half of that)
        stage = (2 if form == "swiglu" else 1) * cfg["BLOCK_N"] * cfg["BLOCK_K"] + bm * cfg["BLOCK_K"] * 2
        assert stage * cfg["num_stages"] <= 96 * 1024, (bm, form)
        assert cfg["BLOCK_N"] >= 16 and cfg["BLOCK_K"] >= 16
        # int4: a power-of-two BLOCK_K is a multiple or a divisor of every group
        assert all(cfg["BLOCK_K"] % g == 0 or g % cfg["BLOCK_K"] == 0 for g in (32, 64, 128)), (bm, form)
    for (bm, form), cfg in gm.GEMM_INT4_CONFIGS.items():  # int4's own entries: half a byte a weight
        assert (bm, form) in gm.GEMM_QUANT_CONFIGS
        stage = (2 if form == "swiglu" else 1) * cfg["BLOCK_N"] * cfg["BLOCK_K"] // 2 + bm * cfg["BLOCK_K"] * 2
        assert stage * cfg["num_stages"] <= 96 * 1024 and cfg["BLOCK_K"] in (64, 128), (bm, form)
    assert gm.gemm_config(3, False, gm.WFMT_INT4) is gm.GEMM_INT4_CONFIGS[(16, "gemm")]
    assert gm.gemm_config(3, True, gm.WFMT_INT4) is gm.GEMM_INT4_CONFIGS[(16, "swiglu")]
    assert gm.gemm_config(3, False, gm.WFMT_INT8) is gm.GEMM_QUANT_CONFIGS[(16, "gemm")]
    assert gm.gemm_config(40, False, gm.WFMT_INT4) is gm.GEMM_QUANT_CONFIGS[(64, "gemm")]
    assert gm.gemm_config(3, False) is gm.GEMM_CONFIGS[(16, "gemm")]
    # the RMSNorm prologue's own entry where its bucket has one, else the plain one
    assert gm.gemm_config(3, False, rmsnorm=True) is gm.GEMM_CONFIGS[(16, "rmsnorm")]
    assert gm.gemm_config(3, True, rmsnorm=True) is gm.GEMM_CONFIGS[(16, "swiglu")]
    assert gm.gemm_config(40, False, gm.WFMT_INT8, rmsnorm=True) is gm.GEMM_QUANT_CONFIGS[(64, "gemm")]
    # Llama-7B on 132 SMs, 64-wide output tiles, 128-wide K tiles: wo / w2 (64 tiles) split in two, wqkv (192
    # tiles), w13 (172) and the head not at all; on 80 SMs nothing splits
    assert gm.choose_split_k(64, 4096, 128, 132) == 2 and gm.choose_split_k(64, 11008, 128, 132) == 2
    assert gm.choose_split_k(192, 4096, 128, 132) == gm.choose_split_k(500, 4096, 128, 132) == 1
    assert gm.choose_split_k(64, 4096, 128, 80) == 1
    # the RMSNorm form's 32-wide tiles at PER_SM 3 on 132 SMs: Llama-3-8B's wqkv (6144 rows) splits in two,
    # Llama-7B's wqkv (12288) and both heads not at all
    per_sm = gm.GEMM_CONFIGS[(16, "rmsnorm")]["PER_SM"]
    bn, bk = gm.GEMM_CONFIGS[(16, "rmsnorm")]["BLOCK_N"], gm.GEMM_CONFIGS[(16, "rmsnorm")]["BLOCK_K"]
    assert gm.choose_split_k(6144 // bn, 4096, bk, 132 * per_sm) == 2
    assert all(gm.choose_split_k(n // bn, 4096, bk, 132 * per_sm) == 1 for n in (12288, 32000, 128256))
    # few tiles: as many splits as keep MIN_SPLIT_K_TILES K tiles each, and no empty split
    assert gm.choose_split_k(1, 4096, 128, 132) == 4096 // 128 // gm.MIN_SPLIT_K_TILES
    assert gm.choose_split_k(2, 512, 128, 132) == 1
    for split in range(1, 40):
        k_tiles = 37
        s = gm.choose_split_k(1, k_tiles * 64, 64, split)
        per = -(-k_tiles // s)
        assert (s - 1) * per < k_tiles, (split, s)


@needs_triton
def test_per_sm_config_key_raises_the_k_split(monkeypatch):
    """A GEMM config's PER_SM multiplies the programs the K split aims for and never reaches the kernel; an
    explicit split_k wins over it."""
    from llama_fast.kernels import gemm as gm

    x = torch.randn(3, 8192)
    w, scales = torch.zeros(512, 8192, dtype=torch.int8), torch.ones(512)  # int8 weights: 8 tiles of 64 rows
    cfg = dict(gm.GEMM_QUANT_CONFIGS[(16, "gemm")])
    splits = {}
    for per_sm in (1, 4):
        monkeypatch.setitem(gm.GEMM_QUANT_CONFIGS, (16, "gemm"), {**cfg, "PER_SM": per_sm})
        grid, _, kwargs, *_, split = gm.gemm_call(x, w, None, None, None, gm.PROLOGUE_NONE, gm.EPILOGUE_NONE, 0,
                                                   scales, None, 0, 16)
        assert "PER_SM" not in kwargs and grid == (512 // cfg["BLOCK_N"], split) and kwargs["SPLIT_K"] == split
        splits[per_sm] = split
    k_tiles = 8192 // cfg["BLOCK_K"]
    assert splits == {1: gm.choose_split_k(8, 8192, cfg["BLOCK_K"], 16),
                      4: gm.choose_split_k(8, 8192, cfg["BLOCK_K"], 64)}
    assert splits[4] == min(8, k_tiles // gm.MIN_SPLIT_K_TILES) > splits[1]
    *_, split = gm.gemm_call(x, w, None, None, None, gm.PROLOGUE_NONE, gm.EPILOGUE_NONE, 3, scales, None, 0, 16)
    assert split == 3


@needs_triton
def test_bad_shapes_are_refused():
    from llama_fast.kernels import small_m_gemm, small_m_gemm_swiglu

    w = torch.zeros(8, 32)
    for rows in (1, 65):
        with pytest.raises(ValueError, match="2..64 rows"):
            small_m_gemm(torch.zeros(rows, 32), w)
    with pytest.raises(ValueError, match="columns"):
        small_m_gemm(torch.zeros(4, 16), w)
    with pytest.raises(ValueError, match="both rstd and g"):
        small_m_gemm_swiglu(torch.zeros(4, 32), w, rstd=torch.ones(4))
    # quantized weights: the GEMV's format checks (dequant.weight_format)
    q8, q4 = torch.zeros(8, 32, dtype=torch.int8), torch.zeros(8, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="int8 weights"):
        small_m_gemm(torch.zeros(4, 32), q8, scales=torch.ones(7))
    with pytest.raises(ValueError, match="int4 weights: group"):
        small_m_gemm(torch.zeros(4, 32), q4, scales=torch.ones(8, 2), offsets=torch.ones(8, 2), group=16)
    with pytest.raises(ValueError, match="int4 weights: qweight"):
        small_m_gemm(torch.zeros(4, 64), q4, scales=torch.ones(8, 2), offsets=torch.ones(8, 2), group=32)


def test_fused_gemm_kernels_is_the_fastest_path_past_batch_1(monkeypatch):
    """fused-gemm is fused-gemv-early's options, compile mode and prefill chunks with the small-M GEMM on; dense
    weights take it at 2..16 rows, quantized ones at 2..64. fused-gemm-kernels, the row after it and the fastest
    path (the quantized rows' options too), adds the kernels-only step and its rows GEMV for quantized weights."""
    from dataclasses import replace

    from llama_fast import ForwardOptions
    from llama_fast import model
    from llama_fast.model import small_m_gemm_applies

    v, before = harness.VARIANTS["fused-gemm"], harness.VARIANTS["fused-gemv-early"]
    kernels = harness.VARIANTS["fused-gemm-kernels"]
    assert harness.FASTEST == "fused-gemm-kernels"
    assert harness.ABLATION.index("fused-gemm") == harness.ABLATION.index("fused-gemv-early") + 1
    assert harness.ABLATION.index("fused-gemm-kernels") == harness.ABLATION.index("fused-gemm") + 1
    assert not before.options.small_m_gemm and v.options == replace(before.options, small_m_gemm=True)
    assert not v.options.small_m_kernels and not v.options.gemv_rows
    assert kernels.options == replace(v.options, small_m_kernels=True, gemv_rows=True)
    assert (v.compile, v.prefill_chunk, v.quantize) == (before.compile, before.prefill_chunk, before.quantize)
    assert (kernels.compile, kernels.prefill_chunk, kernels.quantize) == (v.compile, v.prefill_chunk, v.quantize)
    assert all(harness.VARIANTS[k].options == kernels.options for k in ("int8", "int4"))
    assert harness.fallback_reason(v, "cpu") == "CUDA only, not run on cpu: CUDA graphs, Triton kernels, PDL"
    assert harness.fallback_reason(harness.Variant("x", "x", ForwardOptions(small_m_gemm=True)), "cpu") == \
        "CUDA only, not run on cpu: Triton kernels"
    # the row ranges (the device check, CUDA only, taken as passed): (B, T, dim) inputs of B * T rows
    monkeypatch.setattr(model, "triton_kernels_apply", lambda x: True)
    opts = ForwardOptions(small_m_gemm=True)
    rows = {m: (small_m_gemm_applies(x := torch.zeros(m, 1, 8), opts), small_m_gemm_applies(x, ForwardOptions(), True))
            for m in (1, 2, 16, 17, 64, 65)}
    assert rows == {1: (False, False), 2: (True, True), 16: (True, True), 17: (False, True), 64: (False, True),
                    65: (False, False)}
    assert not small_m_gemm_applies(torch.zeros(8, 1, 8), ForwardOptions())  # dense: off without the flag


@needs_triton
@pytest.mark.parametrize("arch", [90, 86])
def test_kernels_only_step_forms_compile(arch):
    """The kernels-only step's forms compiled ahead of time for sm_90 (with PDL: griddepcontrol) and sm_86 (without):
    the wqkv GEMM with RMSNorm from partials and RoPE + cache write (Llama-7B's head dim, dense and int4: its
    weights turned into fp16 halves by inline PTX, gemm._int4_sub_tiles, which the interpreter does not run), the
    residual GEMM writing partials, both summing a K split themselves (SERIAL), and the compiled block's split-K
    reduce."""
    from core_helpers import compile_offline
    from llama_fast.kernels import gemm as gm

    pdl = 1 if arch == 90 else 0
    gemm_names = ["x_ptr", "w_ptr", "y_ptr", "part_ptr", "res_ptr", "g_ptr", "rstd_ptr", "s_ptr", "o_ptr", "M", "N",
                  "K", "K_SPLIT", "stride_xm", "stride_wn", "stride_ym", "stride_rm", "stride_sn", "ss_ptr",
                  "ss_out_ptr", "cos_ptr", "sin_ptr", "kc_ptr", "vc_ptr", "pos_ptr", "NSS", "NSS_OUT", "eps", "H",
                  "HKV", "stride_cb", "stride_ch", "stride_cs", "stride_rope", "cnt_ptr"]
    step_types = ["*fp32", "*fp32", "*fp16", "*fp16", "*fp16", "*fp16", "*i64"] + ["i32"] * 2 + ["fp32"] + ["i32"] * 6
    step_types += ["*i32"]
    # what Triton gives 16-aligned pointers and strides at launch (M: 3 rows, say)
    aligned = [i for i, n in enumerate(gemm_names) if n not in ("M", "NSS", "NSS_OUT", "eps")]
    specs = []
    cases = [(gm.WFMT_DENSE, 0, 2, 3, 1, False), (gm.WFMT_INT4, 128, 2, 3, 4, False),
             (gm.WFMT_DENSE, 0, 0, 1, 1, False), (gm.WFMT_DENSE, 0, 0, 1, 2, True), (gm.WFMT_INT4, 128, 2, 3, 4, True)]
    for wfmt, group, prologue, epilogue, split, serial in cases:
        cfg = gm.gemm_config(3, False, wfmt, rmsnorm=prologue != 0)
        wtype = "*fp16" if wfmt == gm.WFMT_DENSE else "*u8"
        types = ["*fp16", wtype, "*fp16", "*fp32", "*fp16", "*fp16", "*fp32", "*fp16", "*fp16"] + ["i32"] * 9
        const = dict(PROLOGUE=prologue, EPILOGUE=epilogue, SPLIT_K=split, PRECISION="tf32", WFMT=wfmt, GROUP=group,
                     BLOCK_M=16, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], NSS_BLOCK=16,
                     SS_OUT=epilogue == 1, ROPE_D=128 if epilogue == 3 else 0, USE_PDL=pdl, SERIAL=serial)
        specs.append(dict(module="llama_fast.kernels.gemm", kernel="_gemm_kernel", names=gemm_names,
                          types=types + step_types, const=const, aligned=aligned,
                          options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}))
    reduce_names = ["part_ptr", "y_ptr", "res_ptr", "M", "N", "stride_ym", "stride_rm"]
    specs.append(dict(module="llama_fast.kernels.gemm", kernel="_split_k_reduce_kernel", names=reduce_names,
                      types=["*fp32", "*fp16", "*fp16"] + ["i32"] * 4,
                      const=dict(EPILOGUE=1, SPLIT_K=2, BLOCK=gm.REDUCE_BLOCK)))
    outs = compile_offline(specs, arch)
    assert len(outs) == 6
    for out in outs[:5]:
        assert ("griddepcontrol.wait" in out["ptx"]) == bool(pdl)
    assert "griddepcontrol" not in outs[5]["ptx"] and "atom." not in outs[5]["ptx"]  # the compiled block's reduce
    for (*_, serial), out in zip(cases, outs):  # the in-kernel K split: one acq_rel count per program, no other
        atoms = [line for line in out["ptx"].splitlines() if "atom." in line]
        assert len(atoms) == (2 if serial else 0), atoms
        assert not serial or (".acq_rel." in atoms[0] and ".add." in atoms[0] and ".exch." in atoms[1]), atoms
    for (wfmt, *_), out in zip(cases, outs):  # int4 at group 128 (fp16): the weights made halves in place
        assert ("prmt.b32" in out["ptx"] and "0x000F000F" in out["ptx"]) == (wfmt == gm.WFMT_INT4), wfmt
    for out in outs[:5]:  # the products on the tensor cores, the weights through cp.async (a 32-row tile of the
        # dense RMSNorm form is under wgmma's 64: mma.sync on sm_90 too, as the compiled step's same form)
        assert "cp.async" in out["ptx"] and ("wgmma" in out["ptx"] or "mma.sync" in out["ptx"]), arch


@needs_triton
@pytest.mark.parametrize("arch", [90, 86])
def test_compiled_kernel_pipelines_the_weights_on_the_tensor_cores(arch):
    """Compiled ahead of time for sm_90 (H200) and sm_86 (A10G), with the divisibility Triton gives 16-aligned
    pointers and strides at launch: the weight loads (dense, or packed int8 / int4 dequantized in registers) are
    cp.async in a num_stages-deep shared-memory ring, the product runs on the tensor cores (wgmma / mma.sync),
    the ring fits an sm_86 card's 99 KB, and the packed weights become fp16 halves in place (inline PTX)."""
    from core_helpers import compile_offline
    from llama_fast.kernels import gemm as gm

    names = ["x_ptr", "w_ptr", "y_ptr", "part_ptr", "res_ptr", "g_ptr", "rstd_ptr", "s_ptr", "o_ptr", "M", "N", "K",
             "K_SPLIT", "stride_xm", "stride_wn", "stride_ym", "stride_rm", "stride_sn", "ss_ptr", "ss_out_ptr",
             "cos_ptr", "sin_ptr", "kc_ptr", "vc_ptr", "pos_ptr", "NSS", "NSS_OUT", "eps", "H", "HKV", "stride_cb",
             "stride_ch", "stride_cs", "stride_rope", "cnt_ptr"]
    step_types = ["*fp32", "*fp32", "*fp16", "*fp16", "*fp16", "*fp16", "*i64"] + ["i32"] * 2 + ["fp32"] + ["i32"] * 6
    step_types += ["*i32"]
    aligned = [i for i, n in enumerate(names) if n not in ("M", "NSS", "NSS_OUT", "eps")]  # M: 3 rows, say
    wtypes = {gm.WFMT_DENSE: "*fp16", gm.WFMT_INT8: "*i8", gm.WFMT_INT4: "*u8"}
    cases = [((16, "gemm"), gm.WFMT_DENSE, 0), ((64, "swiglu"), gm.WFMT_DENSE, 0), ((16, "gemm"), gm.WFMT_INT8, 0),
             ((16, "swiglu"), gm.WFMT_INT8, 0), ((16, "gemm"), gm.WFMT_INT4, 32), ((32, "swiglu"), gm.WFMT_INT4, 128)]
    specs = []
    for (bm, form), wfmt, group in cases:
        cfg = gm.gemm_config(bm, form == "swiglu", wfmt)
        types = ["*fp16", wtypes[wfmt], "*fp16", "*fp32", "*fp16", "*fp16", "*fp32", "*fp16", "*fp16"] + ["i32"] * 9
        types += step_types
        const = dict(PROLOGUE=1, EPILOGUE=2 if form == "swiglu" else 1, SPLIT_K=2, PRECISION="tf32", WFMT=wfmt,
                     GROUP=group, BLOCK_M=bm, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], NSS_BLOCK=1,
                     SS_OUT=False, ROPE_D=0, USE_PDL=0, SERIAL=False)
        specs.append(dict(module="llama_fast.kernels.gemm", kernel="_gemm_kernel", names=names, types=types,
                          const=const, options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]},
                          aligned=aligned))
    for ((bm, form), wfmt, group), out in zip(cases, compile_offline(specs, arch)):
        cfg = gm.gemm_config(bm, form == "swiglu", wfmt)
        ptx = out["ptx"]
        wbytes = {gm.WFMT_DENSE: 2, gm.WFMT_INT8: 1, gm.WFMT_INT4: 0.5}[wfmt]
        stage = ((2 if form == "swiglu" else 1) * cfg["BLOCK_N"] * wbytes + bm * 2) * cfg["BLOCK_K"]
        assert "cp.async" in ptx, (arch, form, wfmt)
        assert ("wgmma" in ptx) if arch == 90 else ("mma.sync" in ptx), (arch, form, wfmt)
        assert (cfg["num_stages"] - 1) * stage <= out["shared"] <= 99 * 1024, (arch, form, wfmt, out["shared"])
        # fp16 models turn the packed weights into halves in place (inline PTX): int8 always, int4 where a K tile
        # lies in one group (group 128 here; at group 32 the tile spans four, and the fp16 FMA form runs)
        assert ("sub.f16x2" in ptx) == (wfmt == gm.WFMT_INT8), (arch, form, wfmt)
        assert ("0x000F000F" in ptx) == (wfmt == gm.WFMT_INT4 and group == 128), (arch, form, wfmt)
