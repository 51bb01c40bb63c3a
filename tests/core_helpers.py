"""Helpers shared by the core tests (imported as a plain module: tests/ has no __init__.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llama_fast import LlamaConfig
from llama_fast.config import _LLAMA3_ROPE
from llama_fast.generate import LlamaFast
from llama_fast.loading import IdTokenizer, build_model

# Tiny Llama shapes for parity tests: every architecture switch llama_fast supports.
_BASE = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, intermediate_size=96, norm_eps=1e-5,
             max_position_embeddings=256, bos_token_id=1, eos_token_id=(2,))
TINY_CONFIGS: dict[str, LlamaConfig] = {
    "mha": LlamaConfig(**_BASE, n_kv_heads=4, name="mha"),
    "gqa": LlamaConfig(**_BASE, n_kv_heads=2, name="gqa"),
    "mqa": LlamaConfig(**_BASE, n_kv_heads=1, name="mqa"),
    # Llama-3.1 scaling with a short original context, so the scaled low frequencies matter at these lengths
    "llama3-rope": LlamaConfig(**_BASE, n_kv_heads=2, rope_theta=500000.0,
                               rope_scaling={**_LLAMA3_ROPE, "original_max_position_embeddings": 32},
                               name="llama3-rope"),
    "linear-rope": LlamaConfig(**_BASE, n_kv_heads=2, rope_scaling={"rope_type": "linear", "factor": 4.0},
                               name="linear-rope"),
    "tied": LlamaConfig(**_BASE, n_kv_heads=2, tie_word_embeddings=True, name="tied"),
    # head_dim 48 with dim 64: q_size = 4 * 48 = 192 != dim
    "head-dim-48": LlamaConfig(**_BASE, n_kv_heads=2, head_dim=48, name="head-dim-48"),
    # head_dim 32 with 6 heads, dim 96 (transformers requires dim % n_heads == 0): q_size 192 != dim
    "head-dim-32": LlamaConfig(**{**_BASE, "dim": 96, "n_heads": 6}, n_kv_heads=3, head_dim=32,
                               name="head-dim-32"),
    "attn-bias": LlamaConfig(**_BASE, n_kv_heads=2, attention_bias=True, name="attn-bias"),
    "mlp-bias": LlamaConfig(**_BASE, n_kv_heads=2, mlp_bias=True, attention_bias=True, name="mlp-bias"),
}


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter a nonzero, non-trivial value (transformers' init leaves biases at 0 and norm
    weights at 1, which would hide a dropped bias or norm weight). Scaled so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 2 and "embed" not in name:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g))
    return module


def make_hf(cfg: LlamaConfig, seed: int = 0):
    """A seeded random transformers LlamaForCausalLM (fp32, sdpa) built from cfg.to_hf()."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    hf = LlamaForCausalLM(cfg.to_hf())
    randomize_(hf, seed)
    if cfg.tie_word_embeddings:
        assert hf.lm_head.weight is hf.model.embed_tokens.weight
    return hf.eval().requires_grad_(False)


def hf_state_dict(hf) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in hf.state_dict().items()}


def ours_from_hf(hf, cfg: LlamaConfig):
    """Our Transformer built from the transformers weights through llama_fast's converter."""
    sd = hf_state_dict(hf)
    return build_model(cfg, lambda n: sd[n], "cpu", torch.float32)


def count_calls(module, names) -> dict[str, int]:
    """Wrap each function `name` of module so that its calls are counted: {name: calls so far} (filled as they
    come; a name never called is absent)."""
    calls: dict[str, int] = {}
    for name in names:
        def counted(*args, _op=getattr(module, name), _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _op(*args, **kwargs)
        setattr(module, name, counted)
    return calls


def fast_from_hf(hf, cfg: LlamaConfig, **kw) -> LlamaFast:
    eos = cfg.eos_token_id[0] if cfg.eos_token_id else None
    return LlamaFast(ours_from_hf(hf, cfg), IdTokenizer(cfg.vocab_size, eos, cfg.pad_token_id), cfg.name, **kw)


_COMPILE_OFFLINE = r"""
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

arch, specs = json.load(sys.stdin)
out = []
for spec in specs:
    kernel = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    kernel = kernel if hasattr(kernel, "cache_key") else kernel.fn  # an autotuner: its function
    # constexprs the spec leaves out take the kernel's defaults (as a launch does)
    const = {**{p.name: p.default for p in kernel.params if p.is_constexpr and p.has_default}, **spec["const"]}
    signature = {**dict(zip(spec["names"], spec["types"])), **dict.fromkeys(const, "constexpr")}
    attrs = {(i,): [["tt.divisibility", 16]] for i in spec["aligned"]}
    src = ASTSource(kernel, signature, constexprs=const, attrs=attrs)
    try:
        k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=spec["options"])
    except RuntimeError as e:  # no ptxas for this target in this Triton install
        print(json.dumps({"skip": str(e)[:200]}))
        sys.exit(0)
    out.append({"ptx": k.asm["ptx"], "shared": k.metadata.shared})
print(json.dumps(out))
"""


def compile_offline(specs: list[dict], arch: int) -> list[dict]:
    """Each spec's kernel compiled ahead of time for ('cuda', arch), without a GPU: [{"ptx", "shared"}] in order,
    or the test skipped where this Triton install cannot compile for that target. A spec: module and kernel (its
    attribute name), names and types of the arguments, const (the constexprs; those left out with a default in the
    kernel take it), options (num_warps, ...), aligned
    (the argument indices Triton specializes as 16-divisible). One fresh process for all of them: a test that ran
    earlier in this one may have imported the kernels under TRITON_INTERPRET=1, and interpreter functions cannot
    be compiled."""
    specs = [{"options": {"num_warps": 4}, "aligned": [], **spec} for spec in specs]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    r = subprocess.run([sys.executable, "-c", _COMPILE_OFFLINE], input=json.dumps([arch, specs]), env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if isinstance(out, dict):
        pytest.skip(f"Triton cannot compile for sm_{arch} here: {out['skip']}")
    return out
