"""A compact Llama (1/2/3): RMSNorm, RoPE, GQA attention over a static KV cache, SwiGLU MLP. No I/O.

Weights are stored fused (wqkv, w13); ForwardOptions selects the code path, so every row of the
ablation table runs real code over one copy of the weights (a row without fusion multiplies by row
slices of the fused weight: views, not copies).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import LlamaConfig
from .kv_cache import KVCache


@dataclass(frozen=True)
class ForwardOptions:
    fused_qkv: bool = True  # one q/k/v matmul; False = q alone + one shared k/v matmul (seed row 1)
    fused_gate_up: bool = True  # one gate/up matmul; False = two
    static_mask: bool = True  # index a preallocated causal mask; False = build it from aranges each call
    tensor_positions: bool = True  # cache written/read at tensor positions over its full length;
    #                                False = the seed's Python-int slice to the valid prefix
    rope_cat: bool = False  # rotate_half with torch.cat (seed) instead of a flip over a (2, D/2) view
    triton_gemv: bool = False  # batch-1 decode projections through llama_fast.kernels.gemv on CUDA
    fused_decode: bool = False  # batch-1 decode blocks as 4 fused Triton GEMVs around attention, on CUDA
    #                             (RMSNorm prologues, residual / SwiGLU epilogues; no bias terms)
    decode_attention: bool = False  # one-query attention by a split-K Triton kernel over the cache, on CUDA
    fused_rope_cache: bool = False  # with fused_decode: RoPE and the K/V cache write in the wqkv GEMV epilogue
    attention_one_launch: bool = False  # with decode_attention: the last chunk of each head combines (1 kernel);
    #                                     batch 1 only (measured to win there; batch 16: -2 %, docs/PERF.md)
    pdl: bool = False  # our decode kernels launched with programmatic dependent launch (sm_90+, eager launches):
    #                    each loads its first weight tile before waiting for the kernel before it, and lets the
    #                    next one launch once its main loop is done
    pdl_gemv_early: bool = False  # with pdl: the batch-1 decode GEMVs (wqkv, wo, w13, w2) let the next kernel
    #                               launch right after their wait, the attention still after its main loop. The
    #                               next kernel's programs then take SM slots only once every program of the GEMV
    #                               is placed, and load their first tiles (the attention: its K/V) under its last
    #                               wave: -2.2 % decode; the attention's early trigger cost +6 % (docs/PERF.md)
    compiled_glue: bool = False  # under the fullgraph compile, also compile each step's input preparation
    #                              (embedding, RoPE rows, mask) and the greedy pick: a few fused kernels
    #                              instead of ~15 small eager ones per decode step; batch 1 only (batch
    #                              16: -6 %, docs/PERF.md)
    split_mlp: bool = False  # prefill-sized inputs (>= SPLIT_MLP_MIN_ROWS rows) run the MLP over the two halves of
    #                         its hidden dimension: half the gate/up/SwiGLU activations alive at once
    graphed_prefill: bool = False  # under the fullgraph compile on CUDA, each prefill chunk replays a captured
    #                               CUDA graph (no host launch work per block)
    small_m_gemm: bool = False  # calls of 2..16 rows (decode at batch 2-16) through llama_fast.kernels.gemm on CUDA:
    #                            every projection in model.linear (dense, or quantized and dequantized in the
    #                            kernel), and a block's wqkv / w13 with the RMSNorm prologue, w13 with the SwiGLU
    #                            epilogue, wo and w2 with the residual add
    small_m_kernels: bool = False  # with small_m_gemm and decode_attention: a decode step of 2..16 rows (quantized
    #                               weights 2..64) as our kernels only, uncompiled in the step's CUDA graph: RMSNorm
    #                               from the residual GEMMs' sum-of-squares partials, RoPE and the K/V cache write in
    #                               the wqkv GEMM's epilogue, the two-kernel attention, the GEMMs with PDL where the
    #                               GPU has it (the attention without: measured slower with it at batch 8 and 16)
    gemv_rows: bool = False  # with small_m_kernels: quantized projections of 2 rows (kernels.gemv_rows.ROWS_MAX)
    #                          as the batch-1 GEMV's loop over every row (each weight dequantized once) instead of
    #                          the small-M GEMM


ROPE_MIN_HEAD_DIM = 32  # the fused qkv+RoPE kernel's BLOCK_N (8..32) must divide the head dim
SPLIT_MLP_MIN_ROWS = 64  # ForwardOptions.split_mlp applies from this many rows (a prefill chunk, not a decode step)


def rope_in_qkv(opts: ForwardOptions, cfg: LlamaConfig) -> bool:
    """Whether the fused decode block computes RoPE and the cache write in its qkv GEMV."""
    return (opts.fused_rope_cache and opts.tensor_positions and not opts.rope_cat
            and cfg.head_dim % ROPE_MIN_HEAD_DIM == 0)


def pdl_mode(opts: ForwardOptions) -> int:
    """The kernels' PDL mode (llama_fast.kernels.PDL_*) for the attention and the head: 0 off, 2 trigger the
    next kernel after the main loop (PDL_TRIGGER_LATE).

    Always 0 in code torch.compile traces: decided here, in the traced caller, because inside a triton_op's
    body (traced again by AOTAutograd) torch.compiler.is_compiling() is False. There, a PDL kernel's gdc
    inline asm defeats Inductor's mutation analysis, which then treats every argument as written: a batch-16
    decode step ran 5 % slower (docs/PERF.md)."""
    return 2 if opts.pdl and not torch.compiler.is_compiling() else 0


def gemv_pdl_mode(opts: ForwardOptions) -> int:
    """pdl_mode for the batch-1 decode GEMVs: 1 (PDL_TRIGGER_EARLY) where ForwardOptions.pdl_gemv_early asks
    for it."""
    mode = pdl_mode(opts)
    return 1 if mode and opts.pdl_gemv_early else mode


def attention_head_dim_ok(head_dim: int) -> bool:
    """Whether the kernels-only decode step takes this head dim: a power of two (the decode attention's tiles) of
    at least 16 (the RoPE epilogue's GEMM tile)."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def triton_kernels_apply(x: torch.Tensor) -> bool:
    """Whether llama_fast.kernels (Triton) can run on x's device."""
    return x.is_cuda


def is_quantized(layer: nn.Module) -> bool:
    """Whether a linear layer holds quantized weights (llama_fast.quant.QuantLinear: qweight, scales, offsets,
    group); such a layer runs as layer(x) except in the decode kernels, which read its tensors directly."""
    return getattr(layer, "qweight", None) is not None


def kernel_weight(layer: nn.Module) -> tuple[torch.Tensor, dict]:
    """(weight, extra op arguments) of a linear layer for the decode kernels: its weight and nothing, or a quantized
    layer's qweight and scales / offsets / group (offsets None for int8, group 0 without groups)."""
    if not is_quantized(layer):
        return layer.weight, {}
    return layer.qweight, {"scales": layer.scales, "offsets": getattr(layer, "offsets", None),
                           "group": layer.group or 0}


def linear(x: torch.Tensor, layer: nn.Linear, opts: ForwardOptions) -> torch.Tensor:
    """layer(x), or our Triton GEMV when asked for and x has only a few rows (the decode step)."""
    rows = x.numel() // x.shape[-1]
    if opts.triton_gemv and triton_kernels_apply(x):
        from .kernels import GEMV_MAX_ROWS, gemv

        if rows <= GEMV_MAX_ROWS:
            w, quant = kernel_weight(layer)
            y = gemv(x.reshape(rows, x.shape[-1]), w, **quant).view(*x.shape[:-1], -1)
            return y if layer.bias is None else y + layer.bias
    if small_m_gemm_applies(x, opts, is_quantized(layer)):
        from .kernels import small_m_gemm

        w, quant = kernel_weight(layer)  # a quantized layer's packed tensors: dequantized in the kernel
        y = small_m_gemm(x.reshape(rows, x.shape[-1]), w, **quant).view(*x.shape[:-1], -1)
        return y if layer.bias is None else y + layer.bias
    return layer(x)


def small_m_gemm_applies(x: torch.Tensor, opts: ForwardOptions, quantized: bool = False) -> bool:
    """Whether x's product goes to the small-M GEMM: on CUDA, a quantized weight at 2..64 rows (the GEMM
    dequantizes its tiles in registers; the other way, layer(x), dequantizes the whole weight to the model dtype on
    every call and multiplies that: three times the bytes of the fp16 product), a dense one at 2..16 rows with
    ForwardOptions.small_m_gemm (past that cuBLAS is faster: kernels.gemm.GEMM_DENSE_MAX_ROWS)."""
    if not ((opts.small_m_gemm or quantized) and triton_kernels_apply(x)):
        return False
    from .kernels import GEMM_DENSE_MAX_ROWS, GEMM_MAX_ROWS, GEMM_MIN_ROWS

    return GEMM_MIN_ROWS <= x.numel() // x.shape[-1] <= (GEMM_MAX_ROWS if quantized else GEMM_DENSE_MAX_ROWS)


def small_m_ops(rows: int, w: torch.Tensor, quant: dict, opts: ForwardOptions):
    """The module whose ops (small_m_qkv_rope, small_m_residual_ss, small_m_swiglu_ss, small_m_rmsnorm_ss) run a
    projection of the kernels-only decode step: kernels.gemv_rows for a quantized weight at 2 rows
    (ForwardOptions.gemv_rows), else the small-M GEMM (kernels.gemm)."""
    from .kernels import gemm, gemv_rows

    use_rows = opts.gemv_rows and gemv_rows.rows_apply(rows, w, quant.get("scales"), quant.get("offsets"))
    return gemv_rows if use_rows else gemm


def rms_rstd(x: torch.Tensor, eps: float) -> torch.Tensor:
    """The per-row 1 / RMS of x (..., K) -> (rows,) fp32, as RMSNorm computes it (the GEMM's RMSNorm prologue)."""
    return torch.rsqrt(x.float().pow(2).mean(-1) + eps).reshape(-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, use_cat: bool) -> torch.Tensor:
    """x (B, H, T, D); cos, sin (B, 1, T, D). With use_cat, sin is the plain table (rotate_half with
    torch.cat, as transformers); without, it is the signed table cat(-sin[:D/2], sin[D/2:])."""
    if use_cat:
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin
    # swap the two halves with a flip over a (2, D/2) view: same products, no concatenated copy
    swapped = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)
    return x * cos + swapped * sin


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.wqkv = nn.Linear(cfg.dim, cfg.q_size + 2 * cfg.kv_size, bias=cfg.attention_bias)
        self.wo = nn.Linear(cfg.q_size, cfg.dim, bias=cfg.attention_bias)  # transformers: o_proj too
        self.kv_cache: KVCache | None = None

    def _qkv(self, x: torch.Tensor, opts: ForwardOptions):
        c = self.cfg
        if opts.fused_qkv or is_quantized(self.wqkv):  # no row slices of a quantized weight: one product
            return linear(x, self.wqkv, opts).split([c.q_size, c.kv_size, c.kv_size], dim=-1)
        w, b = self.wqkv.weight, self.wqkv.bias
        q = F.linear(x, w[: c.q_size], None if b is None else b[: c.q_size])
        kv = F.linear(x, w[c.q_size:], None if b is None else b[c.q_size:])
        return (q, *kv.split([c.kv_size, c.kv_size], dim=-1))

    def forward(self, x, rope, mask, input_pos, start, opts: ForwardOptions):
        y = self.attend(*self._qkv(x, opts), rope, mask, input_pos, start, opts)
        return linear(y, self.wo, opts)

    def attend(self, q, k, v, rope, mask, input_pos, start, opts: ForwardOptions) -> torch.Tensor:
        """q (B, T, q_size), k, v (B, T, kv_size) -> RoPE, cache write, SDPA -> (B, T, q_size), before wo."""
        c = self.cfg
        B, T, _ = q.shape
        q = q.view(B, T, c.n_heads, c.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        q = apply_rope(q, *rope, use_cat=opts.rope_cat)
        k = apply_rope(k, *rope, use_cat=opts.rope_cat)
        if opts.tensor_positions:
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, Hkv, S, D)
        else:
            k, v = self.kv_cache.update_slice(start, k, v)  # (B, Hkv, start+T, D)
        return self.attention_core(q, k, v, mask, opts)

    def attention_core(self, q, k, v, mask, opts: ForwardOptions) -> torch.Tensor:
        """q (B, H, T, D) over the cache k, v (B, Hkv, L, D) -> (B, T, q_size)."""
        c = self.cfg
        B, _, T, _ = q.shape
        if opts.decode_attention and opts.tensor_positions and T == 1 and triton_kernels_apply(q):
            if opts.attention_one_launch and B == 1:
                from .kernels import decode_attention_one_launch

                y = decode_attention_one_launch(q, k, v, mask[:, 0, 0, :], c.head_dim ** -0.5,
                                                self.attn_counters, pdl_mode(opts))  # (B, H, 1, D)
            else:
                from .kernels import decode_attention

                y = decode_attention(q, k, v, mask[:, 0, 0, :], c.head_dim ** -0.5, pdl_mode(opts))  # (B, H, 1, D)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               enable_gqa=c.n_heads != c.n_kv_heads)  # (B, H, T, D)
        return y.transpose(1, 2).reshape(B, T, c.q_size)


class FeedForward(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.hidden = cfg.intermediate_size
        self.w13 = nn.Linear(cfg.dim, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)  # [gate; up]
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.dim, bias=cfg.mlp_bias)  # down

    def forward(self, x: torch.Tensor, opts: ForwardOptions) -> torch.Tensor:
        # a quantized w13 / w2 has no row or column slices: it runs as one product (layer(x) or the decode GEMV)
        sliceable = not (is_quantized(self.w13) or is_quantized(self.w2))
        if (opts.split_mlp and x.numel() // x.shape[-1] >= SPLIT_MLP_MIN_ROWS and self.hidden % 2 == 0
                and sliceable):
            return self._forward_halves(x)
        if opts.fused_gate_up or not sliceable:
            gate, up = linear(x, self.w13, opts).chunk(2, dim=-1)
            act = F.silu(gate) * up
        else:
            act = self._swiglu(x, 0, self.hidden)
        return linear(act, self.w2, opts)

    def _swiglu(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """silu(gate) * up over hidden units lo..hi-1, with two matmuls by row views of w13 (no copies)."""
        w, b, n = self.w13.weight, self.w13.bias, self.hidden
        gate = F.linear(x, w[lo:hi], None if b is None else b[lo:hi])
        up = F.linear(x, w[n + lo:n + hi], None if b is None else b[n + lo:n + hi])
        return F.silu(gate) * up

    def _forward_halves(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP as the sum of its two hidden halves (down columns as weight views): only one half's
        (rows, hidden/2) activations are alive at a time."""
        n, h = self.hidden, self.hidden // 2
        out = None
        for lo, hi in ((0, h), (h, n)):
            part = F.linear(self._swiglu(x, lo, hi), self.w2.weight[:, lo:hi])  # (B, T, dim)
            out = part if out is None else out + part
        return out if self.w2.bias is None else out + self.w2.bias


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.tp_group = None  # tensor parallel (llama_fast.parallel): wo and w2 outputs are partial sums
        self.tp_rank = 0
        self.tp_zeros: torch.Tensor | None = None  # (1, dim): the fused residual GEMVs' residual on ranks > 0
        self.tp_symm = None  # parallel.SymmAllReduce when the small all-reduces run one-shot over symmetric memory

    def forward(self, x, rope, mask, input_pos, start, opts: ForwardOptions):
        if self._small_m_fusable(x, opts):
            return self._small_m_forward(x, rope, mask, input_pos, start, opts)
        h = x + self._reduce(self.attention(self.attention_norm(x), rope, mask, input_pos, start, opts), 0)
        return h + self._reduce(self.feed_forward(self.ffn_norm(h), opts), 1)

    def _small_m_fusable(self, x: torch.Tensor, opts: ForwardOptions) -> bool:
        """Whether the block runs as _small_m_forward: the small-M GEMM applies, one copy of the weights (dense or
        quantized) without biases (no tensor parallelism: wo / w2 would need the all-reduce before the residual
        add), fused q/k/v and gate/up."""
        a, f = self.attention, self.feed_forward
        layers = (a.wqkv, a.wo, f.w13, f.w2)
        return (small_m_gemm_applies(x, opts, any(is_quantized(m) for m in layers)) and self.tp_group is None
                and opts.fused_qkv and opts.fused_gate_up and all(m.bias is None for m in layers))

    def _small_m_forward(self, x, rope, mask, input_pos, start, opts: ForwardOptions):
        """The block over x (B, T, dim) of 2..64 rows by the small-M GEMM: RMSNorm in the wqkv and w13 prologues,
        SwiGLU in the w13 epilogue, the residual adds in the wo and w2 epilogues; RoPE, the cache write and the
        attention as in Attention.attend. Quantized layers hand the kernels their packed tensors (kernel_weight)."""
        from .kernels import small_m_gemm, small_m_gemm_residual, small_m_gemm_swiglu

        a, f, c = self.attention, self.feed_forward, self.attention.cfg
        B, T, dim = x.shape
        x2 = x.reshape(B * T, dim)
        an, fn = self.attention_norm, self.ffn_norm
        wqkv, qkv_quant = kernel_weight(a.wqkv)
        qkv = small_m_gemm(x2, wqkv, rms_rstd(x2, an.eps), an.weight, **qkv_quant)
        q, k, v = qkv.view(B, T, -1).split([c.q_size, c.kv_size, c.kv_size], dim=-1)
        y = a.attend(q, k, v, rope, mask, input_pos, start, opts)  # (B, T, q_size)
        wo, wo_quant = kernel_weight(a.wo)
        h = small_m_gemm_residual(y.reshape(B * T, -1), wo, x2, **wo_quant)
        w13, w13_quant = kernel_weight(f.w13)
        act = small_m_gemm_swiglu(h, w13, rms_rstd(h, fn.eps), fn.weight, **w13_quant)
        w2, w2_quant = kernel_weight(f.w2)
        return small_m_gemm_residual(act, w2, h, **w2_quant).view(B, T, dim)

    def small_m_decode(self, x2, ss, rope, mask, input_pos, opts: ForwardOptions):
        """One decode token of each of M rows, x2 (M, dim) with ss (M, NSS) its sum-of-squares partials, as our
        kernels only (ForwardOptions.small_m_kernels): rmsnorm+wqkv+RoPE+cache write, attention, wo+residual
        (+partials), rmsnorm+w13+SwiGLU, w2+residual (+partials) -> (x2, ss) for the next block."""
        a, f, c = self.attention, self.feed_forward, self.attention.cfg
        M, pdl = x2.shape[0], gemv_pdl_mode(opts)
        cache = a.kv_cache
        wqkv, qkv_quant = kernel_weight(a.wqkv)
        q = small_m_ops(M, wqkv, qkv_quant, opts).small_m_qkv_rope(
            x2, wqkv, ss, self.attention_norm.weight, self.attention_norm.eps, rope[0].reshape(M, -1),
            rope[1].reshape(M, -1), cache.k_cache, cache.v_cache, input_pos, c.n_heads, pdl,
            **qkv_quant)  # (M, q_size); k, v into the cache
        q = q.view(M, c.n_heads, 1, c.head_dim)  # (B, H, 1, D)
        # the attention launches without PDL here: with it, the step at batch 8 / 16 ran 5.351 / 6.801 ms against
        # 5.054 / 6.273 without (at batch 2 equal; docs/PERF.md)
        y = a.attention_core(q, cache.k_cache, cache.v_cache, mask, replace(opts, pdl=False))  # (B, 1, q_size)
        wo, wo_quant = kernel_weight(a.wo)
        h, ss = small_m_ops(M, wo, wo_quant, opts).small_m_residual_ss(y.view(M, -1), wo, x2, pdl, **wo_quant)
        w13, w13_quant = kernel_weight(f.w13)
        act = small_m_ops(M, w13, w13_quant, opts).small_m_swiglu_ss(h, w13, ss, self.ffn_norm.weight,
                                                                     self.ffn_norm.eps, pdl, **w13_quant)
        w2, w2_quant = kernel_weight(f.w2)
        return small_m_ops(M, w2, w2_quant, opts).small_m_residual_ss(act, w2, h, pdl, **w2_quant)

    def _reduce(self, partial: torch.Tensor, site: int) -> torch.Tensor:
        """A shard's wo (site 0) / w2 (site 1) output summed over the tensor-parallel ranks; as is without tensor
        parallelism."""
        if self.tp_group is None:
            return partial
        if self.tp_symm is not None:
            return self.tp_symm(partial, site)
        from .parallel import all_reduce_sum

        return all_reduce_sum(partial, self.tp_group)

    def fused_decode(self, x, ss, rope, mask, input_pos, start, opts: ForwardOptions):
        """One token, x (1, 1, dim) with ss its sum-of-squares partials: rmsnorm+wqkv, attention,
        wo+residual (+partials), rmsnorm+w13+SwiGLU, w2+residual (+partials) -> (x, ss) for the next block."""
        from .kernels import gemv_rmsnorm, gemv_rmsnorm_swiglu

        a, f, c = self.attention, self.feed_forward, self.attention.cfg
        x2, pdl = x.view(1, -1), gemv_pdl_mode(opts)
        wqkv, qkv_quant = kernel_weight(a.wqkv)  # a quantized layer's tensors go to the kernels as they are
        if rope_in_qkv(opts, c):
            from .kernels import gemv_rmsnorm_qkv_rope

            cache = a.kv_cache
            q = gemv_rmsnorm_qkv_rope(x2, ss, self.attention_norm.weight, wqkv, self.attention_norm.eps,
                                      rope[0].reshape(-1), rope[1].reshape(-1), cache.k_cache, cache.v_cache,
                                      input_pos, c.n_heads, pdl, **qkv_quant)  # (1, q_size); k, v into the cache
            q = q.view(1, 1, c.n_heads, c.head_dim).transpose(1, 2)  # (1, H, 1, D)
            y = a.attention_core(q, cache.k_cache, cache.v_cache, mask, opts)  # (1, 1, q_size)
        else:
            qkv = gemv_rmsnorm(x2, ss, self.attention_norm.weight, wqkv, self.attention_norm.eps, pdl, **qkv_quant)
            q, k, v = qkv.view(1, 1, -1).split([c.q_size, c.kv_size, c.kv_size], dim=-1)
            y = a.attend(q, k, v, rope, mask, input_pos, start, opts)  # (1, 1, q_size)
        wo, wo_quant = kernel_weight(a.wo)
        h, ss = self._residual_gemv(y.reshape(1, -1), wo, x2, pdl, wo_quant, 0)
        w13, w13_quant = kernel_weight(f.w13)
        act = gemv_rmsnorm_swiglu(h, ss, self.ffn_norm.weight, w13, self.ffn_norm.eps, pdl, **w13_quant)
        w2, w2_quant = kernel_weight(f.w2)
        out, ss = self._residual_gemv(act, w2, h, pdl, w2_quant, 1)
        return out.view(1, 1, -1), ss

    def _residual_gemv(self, y, w, res, pdl, quant, site: int):
        """(res + W @ y, its sum-of-squares partials). Tensor parallel: rank 0 adds the residual, the others
        zeros, so one all-reduce of the GEMVs' outputs gives the sum; its partials are then taken again."""
        from .kernels import gemv_residual_ss

        if self.tp_group is None:
            return gemv_residual_ss(y, w, res, pdl, **quant)
        from .kernels import row_ss_partials

        res = res if self.tp_rank == 0 else self.tp_zeros
        target = self.tp_symm.push_target(res.numel(), res.dtype, site) if self.tp_symm is not None else None
        if target is not None:  # the GEMV stores its rows into the peers' buffers, its last programs wait and sum
            from .kernels.gemv import gemv_residual_allreduce

            return gemv_residual_allreduce(y, w, res, *target, self.tp_symm.row_counters[site], pdl, **quant)
        part, _ = gemv_residual_ss(y, w, res, pdl, **quant)
        if self.tp_symm is not None:
            return self.tp_symm.with_ss(part, site, pdl)
        h = self._reduce(part, site)
        return h, row_ss_partials(h)


def run_layer(layer: Block, x, rope, mask, input_pos, start, opts: ForwardOptions) -> torch.Tensor:
    """One block; compile.py compiles this function once and reuses it for every layer."""
    return layer(x, rope, mask, input_pos, start, opts)


def prepare_inputs(model: "Transformer", idx: torch.Tensor, input_pos: torch.Tensor, start: int):
    """(x (B, T, dim), rope (cos, sin) each (B, 1, T, D), mask (B, 1, T, L)) of a forward call: the token
    embeddings, the RoPE rows at each row's positions and the attention mask (compiled like run_layer for
    batch-1 calls when ForwardOptions.compiled_glue)."""
    opts = model.options
    pos = (input_pos[None, :] - model.pad_len[:, None]).clamp(min=0)  # (B, T) RoPE positions
    sin_table = model.rope_sin if opts.rope_cat else model.rope_sin_signed  # gather only the one in use
    rope = (model.rope_cos[pos][:, None], sin_table[pos][:, None])  # each (B, 1, T, D)
    mask = model._mask(input_pos, start, idx.shape[1])
    return model.tok_embeddings(idx), rope, mask


def run_fused_layer(layer: Block, x, ss, rope, mask, input_pos, start, opts: ForwardOptions):
    """One block of the fused batch-1 decode step (compiled once like run_layer)."""
    return layer.fused_decode(x, ss, rope, mask, input_pos, start, opts)


class Transformer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.options = ForwardOptions()
        self.max_seq_len = 0
        self.batch_size = 0
        self.cache_version = 0  # bumped on every reallocation (captured CUDA graphs key on it)
        # regional compilation: one compiled function serves all (identical) blocks; None = eager
        self.compiled_block: Callable | None = None
        self.compiled_fused_block: Callable | None = None  # the same for run_fused_layer
        self.compiled_prepare: Callable | None = None  # the same for prepare_inputs (compiled_glue)
        self.compiled_pick: Callable | None = None  # generate.last_token_pick compiled (compiled_glue)
        # the fused decode kernels have no bias inputs
        self.fusable = not (cfg.attention_bias or cfg.mlp_bias)
        self.tp = 1  # tensor-parallel degree: cfg is then one rank's shard (llama_fast.parallel.install_group_)
        self.tp_head_group = None  # a vocabulary-parallel head's group: its logits slices are all-gathered

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def setup_caches(self, batch: int, max_seq_len: int):
        """Allocate KV caches, masks and RoPE tables once for (batch, max_seq_len)."""
        if (batch, max_seq_len) == (self.batch_size, self.max_seq_len):
            return
        cfg = self.config
        # the embeddings keep the model dtype when the linear layers are quantized
        dev, dtype = self.tok_embeddings.weight.device, self.tok_embeddings.weight.dtype
        self.batch_size, self.max_seq_len = batch, max_seq_len
        self.cache_version += 1
        for layer in self.layers:
            layer.attention.kv_cache = None  # free the old cache before allocating the new one
            layer.attention.kv_cache = KVCache(batch, cfg.n_kv_heads, max_seq_len, cfg.head_dim, dtype, dev)
            # arrival counters of the one-launch decode attention (zero between calls)
            layer.attention.register_buffer("attn_counters", torch.zeros(batch * cfg.n_heads, dtype=torch.int32,
                                                                         device=dev), persistent=False)
        # RoPE as HF computes it: fp32 angles, cos/sin cast to the model dtype
        freqs = torch.outer(torch.arange(max_seq_len, device=dev).float(), cfg.inv_freq().to(dev))
        emb = torch.cat((freqs, freqs), dim=-1)  # (S, D)
        half = cfg.head_dim // 2
        sign = torch.cat((-torch.ones(half, device=dev), torch.ones(half, device=dev)))
        self.register_buffer("rope_cos", emb.cos().to(dtype), persistent=False)
        self.register_buffer("rope_sin", emb.sin().to(dtype), persistent=False)
        self.register_buffer("rope_sin_signed", (emb.sin() * sign).to(dtype), persistent=False)
        self.register_buffer("causal_mask", None, persistent=False)  # free before reallocating
        self.register_buffer("causal_mask", torch.ones(max_seq_len, max_seq_len, dtype=torch.bool,
                                                       device=dev).tril(), persistent=False)
        # Left padding: slot s of row b holds a real token iff s >= pad_len[b]
        self.register_buffer("pad_len", torch.zeros(batch, dtype=torch.long, device=dev), persistent=False)
        self.register_buffer("slot_valid", torch.ones(batch, max_seq_len, dtype=torch.bool, device=dev),
                             persistent=False)
        self.tune_small_m_gemm(batch)

    @torch.no_grad()
    def tune_small_m_gemm(self, rows: int):
        """On a GPU that takes tuned kernel configs (kernels.configs.tuning_needed: not in the table, or the table
        hidden), launch once, eagerly, every small-M GEMM form a decode step of `rows` rows runs, so that each
        (form, n, K) is tuned and cached before torch.compile traces the block (a trace cannot time; it takes the
        cached choice). Nothing to do elsewhere, or where the step does not take the GEMM."""
        w0 = self.tok_embeddings.weight
        if not (triton_kernels_apply(w0) and 2 <= rows <= 64):
            return
        if not (self.options.small_m_gemm or any(is_quantized(m) for m in self.modules())):
            return  # no GEMM in this model's steps (small_m_gemm_applies)
        from .kernels import configs

        if not configs.tuning_needed():
            return
        from .kernels import small_m_gemm, small_m_gemm_residual, small_m_gemm_swiglu

        x = torch.zeros(rows, 1, self.config.dim, device=w0.device, dtype=w0.dtype)

        x2 = x.view(rows, -1)
        rstd = torch.ones(rows, device=w0.device)
        for layer in self.layers:
            a, f = layer.attention, layer.feed_forward
            if layer._small_m_fusable(x, self.options):
                wqkv, qq = kernel_weight(a.wqkv)
                small_m_gemm(x2, wqkv, rstd, layer.attention_norm.weight, **qq)
                wo, oq = kernel_weight(a.wo)
                small_m_gemm_residual(x2.new_zeros(rows, a.wo.in_features), wo, x2, **oq)
                w13, fq = kernel_weight(f.w13)
                act = small_m_gemm_swiglu(x2, w13, rstd, layer.ffn_norm.weight, **fq)
                w2, dq = kernel_weight(f.w2)
                small_m_gemm_residual(act, w2, x2, **dq)
                continue
            for m in (mod for mod in layer.modules() if isinstance(mod, nn.Linear) or is_quantized(mod)):
                xm = x2.new_zeros(rows, 1, m.in_features)
                if small_m_gemm_applies(xm, self.options, is_quantized(m)):
                    linear(xm, m, self.options)
        if small_m_gemm_applies(x, self.options, is_quantized(self.output)):
            linear(x, self.output, self.options)
        if self.small_m_kernels_apply(x):  # the step's head takes the RMSNorm-prologue form at the head's shape
            from .kernels.gemm import rows_ss, small_m_rmsnorm_ss

            head, head_quant = kernel_weight(self.output)
            small_m_rmsnorm_ss(x2, head, rows_ss(x2), self.norm.weight, self.norm.eps, **head_quant)

    def set_padding(self, pad_len: torch.Tensor):
        """pad_len (B,): left-padding length of each row. Written in place (graph-safe)."""
        self.pad_len.copy_(pad_len)
        slots = torch.arange(self.max_seq_len, device=self.pad_len.device)
        self.slot_valid.copy_(slots[None, :] >= self.pad_len[:, None])

    def _mask(self, input_pos: torch.Tensor, start: int, T: int) -> torch.Tensor:
        """Boolean attention mask (B, 1, T, S or start+T). Real queries see real, earlier slots; pad queries
        see earlier pad slots (never an empty row, so no NaN reaches the cache)."""
        opts = self.options
        length = self.max_seq_len if opts.tensor_positions else start + T
        valid = self.slot_valid[:, :length]  # (B, L)
        if opts.static_mask:
            causal = self.causal_mask[input_pos, :length]  # (T, L)
        else:
            causal = torch.arange(length, device=input_pos.device)[None, :] <= input_pos[:, None]
        q_valid = self.slot_valid[:, input_pos]  # (B, T)
        same_kind = valid[:, None, :] == q_valid[:, :, None]  # (B, T, L)
        return (causal[None] & same_kind)[:, None]

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor, start: int = 0,
                logits_index: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) token ids written at cache slots input_pos (T,) = start..start+T-1.

        Returns logits (B, T, V) in the model dtype, or (B, 1, V) for the position logits_index (1,) only."""
        B, T = idx.shape
        opts = self.options
        prepare, _ = self.step_glue(B)
        x, rope, mask = prepare(self, idx, input_pos, start)
        if opts.fused_decode and self.fusable and B * T == 1 and triton_kernels_apply(x):
            return self._fused_decode(x, rope, mask, input_pos, start, opts)
        if T == 1 and self.small_m_kernels_apply(x):
            return self._small_m_decode(x, rope, mask, input_pos, opts)
        run_block = self.compiled_block or run_layer
        for layer in self.layers:
            x = run_block(layer, x, rope, mask, input_pos, start, opts)
        if logits_index is not None:
            x = x.index_select(1, logits_index)  # (B, 1, dim): skip the head for the other positions
        return self._gather_vocab(linear(self.norm(x), self.output, opts))

    def _gather_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """A vocabulary-parallel head's logits slices (..., V/N) of all ranks -> the logits (..., V); any other
        head's logits as they are."""
        if self.tp_head_group is None:
            return logits
        from .parallel import all_gather_vocab

        return all_gather_vocab(logits, self.tp_head_group, self.config.vocab_size)

    def step_glue(self, B: int) -> tuple[Callable, Callable | None]:
        """(input preparation, greedy pick or None for the eager one) of a call with B rows. compiled_glue's
        compiled pair serves batch 1 only: measured to win there, it cost 6 % at batch 16 (docs/PERF.md)."""
        if B == 1 and self.compiled_prepare is not None:
            return self.compiled_prepare, self.compiled_pick
        return prepare_inputs, None

    def _fused_decode(self, x, rope, mask, input_pos, start, opts: ForwardOptions) -> torch.Tensor:
        """The batch-1 decode step as fused GEMVs; each block hands the next its output's RMSNorm partials."""
        from .kernels import gemv_rmsnorm, ss_partials

        ss = ss_partials(x.view(1, -1))
        run_block = self.compiled_fused_block or run_fused_layer
        for layer in self.layers:
            x, ss = run_block(layer, x, ss, rope, mask, input_pos, start, opts)
        head, head_quant = kernel_weight(self.output)
        logits = gemv_rmsnorm(x.view(1, -1), ss, self.norm.weight, head, self.norm.eps, pdl_mode(opts),
                              **head_quant).view(1, 1, -1)
        return self._gather_vocab(logits)

    def small_m_kernels_apply(self, x: torch.Tensor) -> bool:
        """Whether a decode step over x (B, 1, dim) runs as _small_m_decode (ForwardOptions.small_m_kernels): B in
        the small-M GEMM's rows, every block fusable for it (Block._small_m_fusable: no tensor parallelism, no
        biases), int8 layers up to 16 rows, RoPE in the qkv GEMM's epilogue (tensor positions, the flip form), a
        head dim the decode attention takes, and not inside a torch.compile trace (the path launches its kernels
        directly)."""
        from .kernels.gemm import GEMM_INT8_STEP_MAX_ROWS

        opts = self.options
        a, f = self.layers[0].attention, self.layers[0].feed_forward
        return (opts.small_m_kernels and opts.decode_attention and self.fusable and x.shape[0] >= 2
                and (x.shape[0] <= GEMM_INT8_STEP_MAX_ROWS  # else no int8 layer (quant.QuantLinear.bits)
                     or not any(getattr(m, "bits", None) == 8 for m in (a.wqkv, a.wo, f.w13, f.w2)))
                and opts.tensor_positions and not opts.rope_cat and attention_head_dim_ok(self.config.head_dim)
                and not torch.compiler.is_compiling() and self.layers[0]._small_m_fusable(x, opts))

    def _small_m_decode(self, x, rope, mask, input_pos, opts: ForwardOptions) -> torch.Tensor:
        """The decode step of B >= 2 rows as our kernels only (Block.small_m_decode); the head's RMSNorm from the
        last block's partials. x (B, 1, dim) -> logits (B, 1, V)."""
        from .kernels.gemm import rows_ss

        B = x.shape[0]
        x2 = x.view(B, -1)
        ss = rows_ss(x2)
        for layer in self.layers:
            x2, ss = layer.small_m_decode(x2, ss, rope, mask, input_pos, opts)
        head, head_quant = kernel_weight(self.output)
        logits = small_m_ops(B, head, head_quant, opts).small_m_rmsnorm_ss(x2, head, ss, self.norm.weight,
                                                                          self.norm.eps, gemv_pdl_mode(opts),
                                                                          **head_quant)
        return logits.view(B, 1, -1)

    def fused_block_is_kernels_only(self) -> bool:
        """Whether a fused decode block is nothing but our Triton kernels (RoPE and the cache write in the qkv
        GEMV, Triton attention): then compiling it buys nothing, and the CUDA graph over the step removes the
        Python overhead of running it eagerly."""
        opts = self.options
        return (opts.fused_decode and self.fusable and opts.decode_attention and rope_in_qkv(opts, self.config))
