"""llama_fast.model: logits parity with transformers.LlamaForCausalLM (fp32, weights through our converter),
every ForwardOptions code path, the static KV cache (prefill + decode == one full forward), left padding, and the
dispatch of quantized linear layers (every code path, the fused decode kernels)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core_helpers import TINY_CONFIGS, fast_from_hf, make_hf, ours_from_hf
from llama_fast import ForwardOptions
from llama_fast.harness import ABLATION, VARIANTS
from llama_fast.kv_cache import KVCache
from llama_fast.model import apply_rope, gemv_pdl_mode, pdl_mode

TOL = dict(atol=1e-5, rtol=1e-5)
# every distinct code path of the ablation table (compile mode does not change the eager math)
# the quantized rows (int8, int4) run the fastest path's options: their code paths are the fastest row's
OPTION_VARIANTS = {k: VARIANTS[k].options for k in ABLATION
                   if VARIANTS[k].options is not None and VARIANTS[k].quantize is None}


def _ids(cfg, B=2, T=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (B, T), generator=g)


@torch.no_grad()
def _parity(cfg, options=None, seed=0, B=2, T=40):
    hf = make_hf(cfg, seed=seed)
    fast = fast_from_hf(hf, cfg, options=options)
    ids = _ids(cfg, B, T, seed)
    ref = hf(ids).logits
    ours = fast.logits(ids)
    assert ours.shape == ref.shape == (B, T, cfg.vocab_size)
    assert ref.abs().max() > 0.5  # logits are O(1), so the tolerance is meaningful
    torch.testing.assert_close(ours, ref, **TOL)
    return hf, fast, ids


def test_logits_match_transformers(tiny_cfg):
    _parity(tiny_cfg)


@pytest.mark.parametrize("variant", sorted(OPTION_VARIANTS))
@pytest.mark.parametrize("name", ["gqa", "llama3-rope", "head-dim-48", "mlp-bias", "tied"])
def test_every_code_path_matches_transformers(name, variant):
    _parity(TINY_CONFIGS[name], options=OPTION_VARIANTS[variant])


def test_option_variants_cover_every_flag():
    """The ablation rows, and any variant kept beside them for a GPU comparison, exercise both values of every ForwardOptions flag: an option no row switches is code the product never runs.
    Such a variant switches only flags of its own: every ablation row keeps them off."""
    compared = {k: v.options for k, v in VARIANTS.items()
                if k not in ABLATION and v.options is not None and v.quantize is None}
    for flag in ForwardOptions.__dataclass_fields__:
        values = {getattr(o, flag) for o in OPTION_VARIANTS.values()}
        if values != {True, False}:
            assert values == {False} and any(getattr(o, flag) for o in compared.values()), flag


@pytest.mark.parametrize("name", ["llama3-rope", "linear-rope", "attn-bias", "mlp-bias"])
def test_parity_detects_a_dropped_feature(name):
    """Negative control: the same weights without the rope scaling / biases must NOT match, so the parity
    tests above can fail."""
    cfg = TINY_CONFIGS[name]
    hf = make_hf(cfg, seed=0)
    ids = _ids(cfg)
    with torch.no_grad():
        ref = hf(ids).logits
        fast = fast_from_hf(hf, cfg)
        if cfg.rope_scaling:
            fast.model.config = cfg.with_overrides(rope_scaling=None)  # setup_caches reads inv_freq from here
        else:
            for layer in fast.model.layers:
                b = layer.attention.wqkv.bias
                b.zero_()
        diff = (fast.logits(ids) - ref).abs().max()
    assert diff > 1e-3


def test_tied_embeddings_share_one_tensor():
    cfg = TINY_CONFIGS["tied"]
    model = ours_from_hf(make_hf(cfg), cfg)
    assert model.output.weight is model.tok_embeddings.weight
    untied = ours_from_hf(make_hf(TINY_CONFIGS["gqa"]), TINY_CONFIGS["gqa"])
    assert untied.output.weight is not untied.tok_embeddings.weight


def test_random_shape_matches_transformers_reference():
    """random:tiny and load_hf_model('random:tiny') build the same weights independently."""
    import llama_fast

    fast = llama_fast.load_model("random:tiny", device="cpu", dtype="fp32")
    hf = llama_fast.load_hf_model("random:tiny", "cpu", torch.float32)
    ids = _ids(fast.config, B=2, T=24)
    with torch.no_grad():
        torch.testing.assert_close(fast.logits(ids), hf(ids).logits, **TOL)


# ------------------------------------------------------------------------------------------- KV cache
@torch.no_grad()
def _prefill_then_decode(model, ids, prefill_len, tensor_positions=True):
    """Logits of prefill over ids[:, :prefill_len] then one decode step per remaining token (B, T, V)."""
    B, T = ids.shape
    model.setup_caches(B, T + 3)
    model.set_padding(torch.zeros(B, dtype=torch.long))
    outs = [model(ids[:, :prefill_len], torch.arange(prefill_len), 0)]
    for t in range(prefill_len, T):
        start = 0 if tensor_positions else t
        outs.append(model(ids[:, t:t + 1], torch.tensor([t]), start))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("variant", sorted(OPTION_VARIANTS))
@pytest.mark.parametrize("name", ["gqa", "llama3-rope", "head-dim-32"])
def test_prefill_then_decode_equals_full_forward(name, variant):
    cfg = TINY_CONFIGS[name]
    hf = make_hf(cfg, seed=3)
    options = OPTION_VARIANTS[variant]
    fast = fast_from_hf(hf, cfg, options=options)
    ids = _ids(cfg, B=2, T=24, seed=3)
    full = fast.logits(ids)
    stepped = _prefill_then_decode(fast.model, ids, prefill_len=9, tensor_positions=options.tensor_positions)
    torch.testing.assert_close(stepped, full, **TOL)
    with torch.no_grad():
        torch.testing.assert_close(stepped, hf(ids).logits, **TOL)


def test_chunked_prefill_equals_full_forward(gqa_pair):
    """Two prefill chunks written at their tensor positions, then decode: same logits as one forward."""
    cfg, hf, fast = gqa_pair
    ids = _ids(cfg, B=1, T=20, seed=5)
    m = fast.model
    with torch.no_grad():
        full = fast.logits(ids)
        m.setup_caches(1, 32)
        m.set_padding(torch.zeros(1, dtype=torch.long))
        a = m(ids[:, :8], torch.arange(8), 0)
        b = m(ids[:, 8:16], torch.arange(8, 16), 8)
        c = torch.cat([m(ids[:, t:t + 1], torch.tensor([t]), t) for t in range(16, 20)], dim=1)
    torch.testing.assert_close(torch.cat([a, b, c], dim=1), full, **TOL)


def test_logits_index_selects_one_position(gqa_pair):
    cfg, _, fast = gqa_pair
    ids = _ids(cfg, B=2, T=12)
    full = fast.logits(ids)
    m = fast.model
    with torch.no_grad():
        m.setup_caches(2, 12)
        one = m(ids, torch.arange(12), 0, logits_index=torch.tensor([7]))
    assert one.shape == (2, 1, cfg.vocab_size)
    torch.testing.assert_close(one[:, 0], full[:, 7], **TOL)


@pytest.mark.parametrize("variant", ["kv", "gate-up"])
def test_left_padded_rows_match_unpadded_rows(gqa_pair, variant):
    """With left padding, each row's real positions give the logits of that row run alone; decode steps too."""
    cfg, hf, fast = gqa_pair
    old = fast.options
    fast.configure(options=OPTION_VARIANTS[variant])
    try:
        rows = [_ids(cfg, 1, T, seed=T)[0] for T in (10, 6, 3)]
        T = 10
        pad = torch.tensor([T - len(r) for r in rows])
        ids = torch.stack([torch.cat([torch.full((T - len(r),), 0), r]) for r in rows])
        extra = _ids(cfg, 3, 4, seed=99)  # 4 decode tokens per row
        m = fast.model
        with torch.no_grad():
            m.setup_caches(3, T + 4)
            m.set_padding(pad)
            pre = m(ids, torch.arange(T), 0)
            dec = [m(extra[:, i:i + 1], torch.tensor([T + i]), 0 if fast.options.tensor_positions else T + i)
                   for i in range(4)]
            for b, r in enumerate(rows):
                alone = hf(torch.cat([r, extra[b]])[None]).logits[0]
                torch.testing.assert_close(pre[b, pad[b]:], alone[:len(r)], **TOL)
                got = torch.cat([d[b] for d in dec])
                torch.testing.assert_close(got, alone[len(r):], **TOL)
                assert torch.isfinite(pre[b]).all()  # pad queries never see an empty row
    finally:
        fast.configure(options=old)


def test_setup_caches_reallocates_only_on_new_shape(gqa_pair):
    cfg, _, fast = gqa_pair
    m = fast.model
    m.setup_caches(2, 16)
    cache = m.layers[0].attention.kv_cache
    assert isinstance(cache, KVCache)
    assert cache.k_cache.shape == (2, cfg.n_kv_heads, 16, cfg.head_dim)
    m.setup_caches(2, 16)
    assert m.layers[0].attention.kv_cache is cache
    m.setup_caches(1, 20)
    assert m.layers[0].attention.kv_cache.k_cache.shape == (1, cfg.n_kv_heads, 20, cfg.head_dim)
    assert m.causal_mask.shape == (20, 20) and m.rope_cos.shape == (20, cfg.head_dim)
    total = sum(layer.attention.kv_cache.k_cache.nbytes * 2 for layer in m.layers)
    assert total == cfg.kv_cache_bytes(1, 20, torch.float32)


def test_kv_cache_update_paths_agree():
    a = KVCache(2, 3, 10, 4, torch.float32)
    b = KVCache(2, 3, 10, 4, torch.float32)
    k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    ka, va = a.update(torch.arange(2, 7), k, v)
    kb, vb = b.update_slice(2, k, v)
    assert ka.shape == (2, 3, 10, 4) and kb.shape == (2, 3, 7, 4)
    assert torch.equal(ka[:, :, :7], kb) and torch.equal(va[:, :, :7], vb)
    assert torch.equal(ka[:, :, 2:7], k) and a.max_seq_len == 10


def test_apply_rope_flip_equals_cat():
    x = torch.randn(2, 3, 5, 8)
    ang = torch.randn(2, 1, 5, 4)
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos(), emb.sin()
    signed = torch.cat([-sin[..., :4], sin[..., 4:]], -1)
    a = apply_rope(x, cos, sin, use_cat=True)
    b = apply_rope(x, cos, signed, use_cat=False)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    x1, x2 = x[..., :4], x[..., 4:]
    torch.testing.assert_close(a, torch.cat([x1 * cos[..., :4] - x2 * sin[..., :4],
                                             x2 * cos[..., 4:] + x1 * sin[..., 4:]], -1))


# ------------------------------------------------------------------------------------------- fused decode wiring
@pytest.mark.parametrize("cfg_name,rope_in_gemv,one_launch,pdl", [("gqa", False, False, False),
                                                                  ("head-dim-32", True, False, False),
                                                                  ("gqa", False, True, False),
                                                                  ("head-dim-32", True, True, True),
                                                                  ("head-dim-32", True, True, "gemv-early"),
                                                                  ("gqa", False, False, "gemv-early")])
def test_fused_decode_wiring_matches_the_unfused_block(monkeypatch, cfg_name, rope_in_gemv, one_launch, pdl):
    """The fused decode path (RMSNorm prologues from sum-of-squares partials, residual and SwiGLU epilogues,
    optionally RoPE + the K/V cache write in the wqkv epilogue) wired through the model, with the Triton
    kernels replaced by torch references (the kernels themselves: tests/test_kernels.py). The fake partials
    use a different grouping than the real kernels: the consumer must only depend on their sum. Each op is
    told its PDL mode: 0 off, 2 late; with pdl_gemv_early the GEMVs 1 (early) and the attention still 2."""
    import sys
    import types

    import torch.nn.functional as F

    from core_helpers import TINY_CONFIGS, fast_from_hf, make_hf
    from llama_fast import model as model_module
    from llama_fast.model import ForwardOptions, apply_rope

    def rmsnorm_from(x, ss, g, eps):
        rstd = torch.rsqrt(ss.sum() / x.shape[-1] + eps)
        return g * (x.float() * rstd).to(x.dtype)

    def partials(y):
        return y.float().pow(2).view(-1, 4).sum(-1)

    calls, pdl_flags = [], {}  # op kind -> the PDL modes it was given (eager calls: Dynamo cannot guard the dict)

    def told(kind, pdl, call=None):
        if not torch.compiler.is_compiling():
            pdl_flags.setdefault(kind, set()).add(pdl)
            if call:
                calls.append(call)

    fake = types.ModuleType("llama_fast.kernels")
    fake.GEMV_MAX_ROWS = 1
    fake.gemv = lambda x, w: x @ w.T
    fake.ss_partials = partials

    def gemv_rmsnorm(x, ss, g, w, eps, pdl=None):
        told("gemv", pdl)
        return rmsnorm_from(x, ss, g, eps) @ w.T

    def residual_ss(x, w, res, pdl=None):
        told("gemv", pdl)
        y = res + x @ w.T
        return y, partials(y)

    def swiglu(x, ss, g, w13, eps, pdl=None):
        told("gemv", pdl, "swiglu")
        gate, up = (rmsnorm_from(x, ss, g, eps) @ w13.T).chunk(2, dim=-1)
        return F.silu(gate) * up

    def qkv_rope(x, ss, g, w, eps, cos, sin, k_cache, v_cache, input_pos, n_heads, pdl=None):
        told("gemv", pdl, "qkv_rope")
        D, hkv = cos.numel(), k_cache.shape[1]
        q, k, v = (rmsnorm_from(x, ss, g, eps) @ w.T).split([n_heads * D, hkv * D, hkv * D], dim=-1)
        cs = (cos.view(1, 1, 1, D), sin.view(1, 1, 1, D))
        q = apply_rope(q.view(1, 1, n_heads, D).transpose(1, 2), *cs, use_cat=False)
        k_cache.index_copy_(2, input_pos, apply_rope(k.view(1, 1, hkv, D).transpose(1, 2), *cs, use_cat=False))
        v_cache.index_copy_(2, input_pos, v.view(1, 1, hkv, D).transpose(1, 2))
        return q.transpose(1, 2).reshape(1, -1)

    def decode_attention(q, k, v, mask, scale, pdl=None):
        told("attention", pdl, "attention")
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])

    def one_launch_attention(q, k, v, mask, scale, counters, pdl=None):
        assert counters.shape == (q.shape[0] * q.shape[1],) and counters.dtype == torch.int32
        if not torch.compiler.is_compiling():
            assert not counters.any()
            calls.append("one launch")
        return decode_attention(q, k, v, mask, scale, pdl)

    fake.gemv_rmsnorm = gemv_rmsnorm
    fake.decode_attention_one_launch = one_launch_attention
    fake.gemv_residual_ss = residual_ss
    fake.gemv_rmsnorm_swiglu = swiglu
    fake.gemv_rmsnorm_qkv_rope = qkv_rope
    fake.decode_attention = decode_attention
    monkeypatch.setitem(sys.modules, "llama_fast.kernels", fake)
    monkeypatch.setattr(model_module, "triton_kernels_apply", lambda x: True)

    cfg = TINY_CONFIGS[cfg_name]
    fast = fast_from_hf(make_hf(cfg, seed=7), cfg)
    ids = torch.randint(3, cfg.vocab_size, (1, 9), generator=torch.Generator().manual_seed(1))
    fast.configure(options=ForwardOptions())
    plain = fast.generate(ids, max_new_tokens=8, min_new_tokens=8)
    opts = ForwardOptions(triton_gemv=True, fused_decode=True, decode_attention=True, fused_rope_cache=rope_in_gemv,
                          attention_one_launch=one_launch, pdl=bool(pdl), pdl_gemv_early=pdl == "gemv-early")
    fast.configure(options=opts)
    pdl_flags.clear()
    fused = fast.generate(ids, max_new_tokens=8, min_new_tokens=8)
    # every decode step of every layer took the fused MLP kernel and the decode attention kernel
    steps = 7 * cfg.n_layers
    assert calls.count("attention") == steps and calls.count("swiglu") == steps
    assert calls.count("qkv_rope") == (steps if rope_in_gemv else 0)
    assert calls.count("one launch") == (steps if one_launch else 0)
    # every fused op was told its PDL mode: the head (a plain gemv_rmsnorm) keeps the late trigger
    late = 2 if pdl else 0
    assert pdl_flags == {"gemv": {1, late} if pdl == "gemv-early" else {late}, "attention": {late}}
    assert torch.equal(fused, plain)
    if one_launch:  # batch 2 takes the two-kernel decode attention: the one-launch kernel serves batch 1 only
        calls.clear()
        fast.generate(torch.cat([ids, ids.flip(1)]), max_new_tokens=8, min_new_tokens=8)
        assert calls.count("one launch") == 0 and calls.count("attention") == steps
    # the same wiring under the regional compile (what the fullgraph mode runs); a block of only our kernels
    # (RoPE in the qkv GEMV, Triton attention) is not compiled: it runs eagerly
    fast.configure(options=opts, compile="fullgraph")
    assert torch.equal(fast.generate(ids, max_new_tokens=8, min_new_tokens=8), plain)
    assert (fast.model.compiled_fused_block is None) == rope_in_gemv
    assert fast.model.compiled_block is not None


def test_pdl_mode_is_off_in_compiled_code():
    """A PDL kernel traced by torch.compile defeats Inductor's mutation analysis (docs/PERF.md), and
    inside a triton_op's body is_compiling() no longer says so: the traced caller must pass PDL off."""
    opts = ForwardOptions(pdl=True, pdl_gemv_early=True)
    assert (pdl_mode(opts), gemv_pdl_mode(opts)) == (2, 1)
    compiled = torch.compile(lambda x: x + pdl_mode(opts) + gemv_pdl_mode(opts), backend="eager", fullgraph=True)
    assert compiled(torch.zeros(1)).item() == 0


# ------------------------------------------------------------------------------------------- quantized layers
def quantized(model, scheme: str):
    """model with its linear layers quantized by llama_fast.quant (the tiny shapes' K of 64 and 96 take int4
    groups 64 and 32: the fallback warns, expectedly)."""
    import warnings

    from llama_fast.quant import QuantWarning, quantize_model_

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantWarning)
        return quantize_model_(model, scheme).requires_grad_(False)


def dequantized_copy(model):
    """The unquantized twin of a quantized model: nn.Linear layers holding the dequantized weights."""
    import copy

    from llama_fast.quant import quant_linears

    twin = copy.deepcopy(model)
    for name, layer in quant_linears(twin).items():
        parent_name, _, attr = name.rpartition(".")
        lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        lin.weight = nn.Parameter(layer.dequantize(), requires_grad=False)
        lin.bias = layer.bias
        setattr(twin.get_submodule(parent_name), attr, lin)
    return twin


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("variant", sorted(OPTION_VARIANTS))
def test_quantized_layers_run_every_code_path(variant, scheme):
    """On the CPU every ablation row's code path runs a model with quantized layers: the paths that take row or
    column slices of a weight (unfused q/k/v or gate/up, the split MLP of long prefills) run a quantized layer
    as one product instead, and prefill + decode equals the unquantized model holding the dequantized weights."""
    cfg = TINY_CONFIGS["gqa"]
    model = quantized(ours_from_hf(make_hf(cfg, seed=4), cfg), scheme)
    twin = dequantized_copy(model)
    options = OPTION_VARIANTS[variant]
    model.options = twin.options = options
    ids = _ids(cfg, B=2, T=80, seed=4)  # 72 prefill rows: past SPLIT_MLP_MIN_ROWS
    got = _prefill_then_decode(model, ids, prefill_len=72, tensor_positions=options.tensor_positions)
    ref = _prefill_then_decode(twin, ids, prefill_len=72, tensor_positions=options.tensor_positions)
    assert ref.abs().max() > 0.5
    torch.testing.assert_close(got, ref, **TOL)


def test_fused_decode_hands_the_kernels_the_quantized_tensors(monkeypatch):
    """The fused decode block, the head and model.linear give the kernels each quantized layer's qweight, scales,
    offsets and group (Triton kernels replaced by dequantize-then-matmul: the kernels themselves are checked in
    tests/test_kernels.py and, through the model, in the interpreter test below)."""
    import types

    from llama_fast import model as model_module
    from llama_fast.model import apply_rope
    from test_kernels import dequantize

    got = []  # the qweight of every kernel call

    def weight(w, scales=None, offsets=None, group=0):
        assert scales is not None, "a quantized layer reached a kernel without its scales"
        assert (offsets is None) == (w.dtype == torch.int8)
        assert group == 0 if offsets is None else group in (32, 64)
        got.append(w)
        return dequantize(w, scales, offsets, group).float()

    def rmsnorm_from(x, ss, g, eps):
        return g * (x.float() * torch.rsqrt(ss.sum() / x.shape[-1] + eps)).to(x.dtype)

    fake = types.ModuleType("llama_fast.kernels")
    fake.GEMV_MAX_ROWS = 1
    # no row count takes the small-M GEMM (quantized rows 2-64 would: tests/test_kernels_gemm.py covers it)
    fake.GEMM_MIN_ROWS, fake.GEMM_MAX_ROWS, fake.GEMM_DENSE_MAX_ROWS = 2, 1, 1
    fake.ss_partials = lambda y: y.float().pow(2).view(-1, 8).sum(-1)
    fake.gemv = lambda x, w, **q: x @ weight(w, **q).T
    fake.gemv_rmsnorm = lambda x, ss, g, w, eps, pdl=0, **q: rmsnorm_from(x, ss, g, eps) @ weight(w, **q).T

    def residual_ss(x, w, res, pdl=0, **q):
        y = res + x @ weight(w, **q).T
        return y, fake.ss_partials(y)

    def swiglu(x, ss, g, w13, eps, pdl=0, **q):
        gate, up = (rmsnorm_from(x, ss, g, eps) @ weight(w13, **q).T).chunk(2, dim=-1)
        return F.silu(gate) * up

    def qkv_rope(x, ss, g, w, eps, cos, sin, k_cache, v_cache, input_pos, n_heads, pdl=0, **q):
        D, hkv = cos.numel(), k_cache.shape[1]
        qq, k, v = (rmsnorm_from(x, ss, g, eps) @ weight(w, **q).T).split([n_heads * D, hkv * D, hkv * D], dim=-1)
        cs = (cos.view(1, 1, 1, D), sin.view(1, 1, 1, D))
        qq = apply_rope(qq.view(1, 1, n_heads, D).transpose(1, 2), *cs, use_cat=False)
        k_cache.index_copy_(2, input_pos, apply_rope(k.view(1, 1, hkv, D).transpose(1, 2), *cs, use_cat=False))
        v_cache.index_copy_(2, input_pos, v.view(1, 1, hkv, D).transpose(1, 2))
        return qq.transpose(1, 2).reshape(1, -1)

    fake.gemv_residual_ss, fake.gemv_rmsnorm_swiglu, fake.gemv_rmsnorm_qkv_rope = residual_ss, swiglu, qkv_rope
    monkeypatch.setitem(sys.modules, "llama_fast.kernels", fake)
    monkeypatch.setattr(model_module, "triton_kernels_apply", lambda x: True)
    cfg = TINY_CONFIGS["head-dim-32"]
    for scheme in ("int8", "int4"):
        model = quantized(ours_from_hf(make_hf(cfg, seed=5), cfg), scheme)
        ids = _ids(cfg, B=1, T=12, seed=5)
        model.options = ForwardOptions()
        ref = _prefill_then_decode(model, ids, prefill_len=8)
        qweights = {id(m.qweight) for m in model.modules() if hasattr(m, "qweight")}
        for options in (ForwardOptions(triton_gemv=True),  # model.linear: every decode projection
                        ForwardOptions(triton_gemv=True, fused_decode=True),
                        ForwardOptions(triton_gemv=True, fused_decode=True, fused_rope_cache=True)):
            got.clear()
            model.options = options
            torch.testing.assert_close(_prefill_then_decode(model, ids, prefill_len=8), ref, **TOL)
            assert {id(w) for w in got} == qweights and len(got) == 4 * (cfg.n_layers * 4 + 1), (options, len(got))


MODEL_CHECK = r"""
import sys
import torch
from llama_fast import model as model_module
from llama_fast.kernels import configs
from llama_fast.model import ForwardOptions
from core_helpers import TINY_CONFIGS, make_hf, ours_from_hf
from test_model import _ids, _prefill_then_decode, quantized

model_module.triton_kernels_apply = lambda x: True  # the kernels run on the CPU, in Triton's interpreter
# few programs with small K tiles: the interpreter's time goes with programs times tile operations (the pinned
# configs: tests/test_kernels.py)
configs.CONFIG_OVERRIDE = lambda form, n, K: {"BLOCK_N": 32 if form.startswith("qkv") else 64, "BLOCK_K": 256,
                                              "num_warps": 4, "num_stages": 1} if "int" in form else None
cfg = TINY_CONFIGS[sys.argv[1]]
model = quantized(ours_from_hf(make_hf(cfg, seed=6), cfg), sys.argv[2])
ids = _ids(cfg, B=1, T=10, seed=6)
model.options = ForwardOptions()
ref = _prefill_then_decode(model, ids, prefill_len=8)  # the torch path: dequantize, then linear
for options in (ForwardOptions(triton_gemv=True),
                ForwardOptions(triton_gemv=True, fused_decode=True, fused_rope_cache=True, decode_attention=True)):
    model.options = options
    got = _prefill_then_decode(model, ids, prefill_len=8)
    # fp32 throughout; each kernel's error is a few 1e-6 of its output (tests/test_kernels.py), through two blocks
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    print(options, (got - ref).abs().max().item())
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (the CPU torch build has none); the kernels run in Triton's "
                           "interpreter wherever triton is installed, and for real on a GPU")
@pytest.mark.parametrize("cfg_name,scheme", [("head-dim-32", "int4"), ("gqa", "int8")])
def test_quantized_decode_through_the_kernels_in_the_interpreter(cfg_name, scheme):
    """A tiny model with quantized layers (int4 with groups 32 and 64 in one model; int8), its decode steps
    through the real kernels in Triton's interpreter (model.linear's GEMV; the fused block with RoPE and the cache
    write in the qkv GEMV, and the head) against the torch path on the same quantized weights."""
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{tests.parent}{os.pathsep}{tests}"}
    r = subprocess.run([sys.executable, "-c", MODEL_CHECK, cfg_name, scheme], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


@pytest.mark.parametrize("cfg_name, rows, tuning, expected", [
    ("gqa", 3, True, {"small_m_gemm": 3, "small_m_gemm_residual": 4, "small_m_gemm_swiglu": 2}),  # 2 blocks + head
    ("mlp-bias", 3, True, {"small_m_gemm": 9}),  # no fused block: each projection (4 a block) and the head
    ("gqa", 17, True, {}),  # past the dense GEMM's 16 rows: cuBLAS, nothing to tune
    ("gqa", 3, False, {})])  # a GPU in the table: its configs are measured
def test_tune_small_m_gemm_launches_each_form_of_the_step_once_eagerly(monkeypatch, cfg_name, rows, tuning, expected):
    """On a GPU that takes tuned configs, setting up the caches for a batch launches every small-M GEMM form that
    batch's step runs, once a layer, outside torch.compile (so each shape is tuned before the block is traced).
    The kernels replaced by stand-ins that count (tests/test_kernels_gemm.py runs the real ones)."""
    kernels = pytest.importorskip("llama_fast.kernels", reason="triton is not installed: llama_fast.kernels needs it")
    from llama_fast import model as model_module
    from llama_fast.kernels import configs

    calls = {}

    def stand_in(name):
        def op(x, w, *args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            rows_out = w.shape[0] // 2 if name == "small_m_gemm_swiglu" else w.shape[0]
            return x.new_zeros(x.shape[0], rows_out)
        return op

    for name in ("small_m_gemm", "small_m_gemm_residual", "small_m_gemm_swiglu"):
        monkeypatch.setattr(kernels, name, stand_in(name))
    monkeypatch.setattr(model_module, "triton_kernels_apply", lambda x: True)
    monkeypatch.setattr(configs, "tuning_needed", lambda: tuning)
    cfg = TINY_CONFIGS[cfg_name]
    model = ours_from_hf(make_hf(cfg, seed=1), cfg).eval()
    model.options = ForwardOptions(small_m_gemm=True)
    model.setup_caches(rows, 16)
    assert calls == expected, calls
