"""Model configuration: one dataclass, built from a transformers config or a named shape."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch


class ConfigError(ValueError):
    """A model configuration llama_fast cannot run (not Llama, unsupported rope type, ...)."""


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None = n_heads (MHA)
    head_dim: int | None = None  # None = dim // n_heads
    intermediate_size: int = 11008
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # None, or a dict like transformers' rope_parameters: {"rope_type": "llama3" | "linear", "factor": ...}
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = 1
    eos_token_id: tuple[int, ...] = (2,)
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    name: str = field(default="", compare=False)

    def __post_init__(self):
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in ("default", "linear", "llama3"):
            raise ConfigError(f"rope type {rope_type!r} is not supported (default, linear, llama3 are)")

    @property
    def q_size(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_heads * self.head_dim

    def num_parameters(self, include_embedding: bool = True) -> int:
        attn = self.dim * (self.q_size + 2 * self.kv_size) + self.q_size * self.dim
        if self.attention_bias:  # q, k, v and o biases (transformers' o_proj has one too)
            attn += self.q_size + 2 * self.kv_size + self.dim
        mlp = 3 * self.dim * self.intermediate_size
        if self.mlp_bias:
            mlp += 2 * self.intermediate_size + self.dim
        per_layer = attn + mlp + 2 * self.dim
        n = self.n_layers * per_layer + self.dim  # final norm
        n += self.vocab_size * self.dim  # output head (also the embedding when tied)
        if include_embedding and not self.tie_word_embeddings:
            n += self.vocab_size * self.dim
        return n

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """The model's linear layers by module name -> (out_features, in_features), in load order: per block
        attention.wqkv, attention.wo, feed_forward.w13, feed_forward.w2, then the output head (listed even when
        it is tied to the embedding). What weight-only quantization replaces (llama_fast.quant)."""
        shapes = {}
        for i in range(self.n_layers):
            p = f"layers.{i}."
            shapes[p + "attention.wqkv"] = (self.q_size + 2 * self.kv_size, self.dim)
            shapes[p + "attention.wo"] = (self.dim, self.q_size)
            shapes[p + "feed_forward.w13"] = (2 * self.intermediate_size, self.dim)
            shapes[p + "feed_forward.w2"] = (self.dim, self.intermediate_size)
        shapes["output"] = (self.vocab_size, self.dim)
        return shapes

    def kv_cache_bytes(self, batch: int, seq_len: int, dtype: torch.dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * self.n_layers * batch * self.n_kv_heads * seq_len * self.head_dim * elem

    def inv_freq(self) -> torch.Tensor:
        """RoPE inverse frequencies (head_dim // 2,), fp32, with linear or Llama-3.1 scaling applied."""
        d = self.head_dim
        inv_freq = 1.0 / (self.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        scaling = self.rope_scaling or {}
        rope_type = scaling.get("rope_type", "default")
        if rope_type == "linear":
            inv_freq = inv_freq / scaling["factor"]
        elif rope_type == "llama3":
            factor = scaling["factor"]
            low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
            old_len = scaling["original_max_position_embeddings"]
            low_wavelen, high_wavelen = old_len / low, old_len / high
            wavelen = 2 * math.pi / inv_freq
            scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
            smooth = (old_len / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
            inv_freq = torch.where(medium, smoothed, scaled)
        return inv_freq

    @classmethod
    def from_hf(cls, hf_config: Any, name: str = "") -> "LlamaConfig":
        """From a transformers config object or its dict; refuses anything that is not Llama."""
        d = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
        model_type = d.get("model_type")
        archs = d.get("architectures") or []
        if model_type != "llama":
            arch = archs[0] if archs else model_type
            raise ConfigError(f"{name or 'model'} is a {arch!r} model (model_type={model_type!r}); "
                              "llama_fast runs Llama architectures only")
        # transformers 5 keeps theta and scaling in rope_parameters; 4.x in rope_theta / rope_scaling
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", None) or d.get("rope_theta") or 10000.0
        if "type" in rope and "rope_type" not in rope:
            rope["rope_type"] = rope.pop("type")
        rope_type = rope.get("rope_type", "default")
        if d.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"hidden_act {d.get('hidden_act')!r} is not supported (silu is)")
        eos = d.get("eos_token_id")
        eos = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        n_heads = d["num_attention_heads"]
        return cls(
            vocab_size=d["vocab_size"],
            dim=d["hidden_size"],
            n_layers=d["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=d.get("num_key_value_heads") or n_heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // n_heads,
            intermediate_size=d["intermediate_size"],
            norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=None if rope_type == "default" else rope,
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias", False)),
            mlp_bias=bool(d.get("mlp_bias", False)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=eos,
            pad_token_id=d.get("pad_token_id"),
            initializer_range=d.get("initializer_range", 0.02),
            name=name,
        )

    def to_hf(self):
        """The equivalent transformers.LlamaConfig (for references and random HF models)."""
        from transformers import LlamaConfig as HFLlamaConfig

        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope = {**self.rope_scaling, "rope_theta": self.rope_theta}
        kwargs = dict(
            vocab_size=self.vocab_size, hidden_size=self.dim, num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads, num_key_value_heads=self.n_kv_heads, head_dim=self.head_dim,
            intermediate_size=self.intermediate_size, rms_norm_eps=self.norm_eps,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings, attention_bias=self.attention_bias,
            mlp_bias=self.mlp_bias, bos_token_id=self.bos_token_id,
            eos_token_id=list(self.eos_token_id) if len(self.eos_token_id) != 1 else self.eos_token_id[0],
            pad_token_id=self.pad_token_id, initializer_range=self.initializer_range,
        )
        cfg = HFLlamaConfig(**kwargs, attn_implementation="sdpa")
        # transformers 5 reads rope_parameters, 4.x reads rope_theta / rope_scaling: set both. In 5.x
        # rope_scaling is a deprecated alias of rope_parameters (None would erase it): rope_parameters last.
        import warnings

        cfg.rope_theta = self.rope_theta
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            cfg.rope_scaling = dict(self.rope_scaling) if self.rope_scaling else None
        cfg.rope_parameters = rope
        return cfg

    def with_overrides(self, **kw) -> "LlamaConfig":
        known = {f.name for f in fields(self)}
        unknown = set(kw) - known
        if unknown:
            raise ConfigError(f"unknown config fields: {sorted(unknown)}")
        return replace(self, **kw)


_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

# Named shapes for random-weight models (random:<shape>)
NAMED_SHAPES: dict[str, LlamaConfig] = {
    "tiny": LlamaConfig(vocab_size=512, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=352,
                        max_position_embeddings=4096, name="tiny"),
    "llama-7b": LlamaConfig(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, intermediate_size=11008,
                            norm_eps=1e-6, max_position_embeddings=2048, name="llama-7b"),
    "llama2-7b": LlamaConfig(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, intermediate_size=11008,
                             norm_eps=1e-5, max_position_embeddings=4096, name="llama2-7b"),
    # 138 GB in fp16: the tensor-parallel shape (llama_fast.parallel), 8 KV heads (GQA)
    "llama2-70b": LlamaConfig(vocab_size=32000, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                              intermediate_size=28672, norm_eps=1e-5, max_position_embeddings=4096,
                              name="llama2-70b"),
    "llama3-8b": LlamaConfig(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                             intermediate_size=14336, norm_eps=1e-5, rope_theta=500000.0,
                             rope_scaling=_LLAMA3_ROPE, max_position_embeddings=131072,
                             bos_token_id=128000, eos_token_id=(128001, 128008, 128009), name="llama3-8b"),
}
