"""llama_fast.config: LlamaConfig <-> transformers, RoPE frequencies, parameter counts, named shapes, refusals."""
from __future__ import annotations

import pytest
import torch

from llama_fast import NAMED_SHAPES, ConfigError, LlamaConfig

from core_helpers import TINY_CONFIGS, make_hf


def test_round_trip_through_transformers(tiny_cfg):
    hf_cfg = tiny_cfg.to_hf()
    assert hf_cfg.model_type == "llama"
    assert hf_cfg.head_dim == tiny_cfg.head_dim
    assert hf_cfg.num_key_value_heads == tiny_cfg.n_kv_heads
    back = LlamaConfig.from_hf(hf_cfg)
    assert back == tiny_cfg  # every field but name
    # and through the dict transformers writes to config.json
    assert LlamaConfig.from_hf(hf_cfg.to_dict()) == tiny_cfg


@pytest.mark.parametrize("shape", sorted(NAMED_SHAPES))
def test_named_shapes_round_trip(shape):
    cfg = NAMED_SHAPES[shape]
    assert LlamaConfig.from_hf(cfg.to_hf().to_dict()) == cfg


def test_to_hf_keeps_rope_scaling_for_transformers():
    """transformers must actually see the scaling, or a parity test would compare two unscaled models."""
    hf_cfg = TINY_CONFIGS["llama3-rope"].to_hf()
    assert hf_cfg.rope_parameters["rope_type"] == "llama3"
    assert hf_cfg.rope_parameters["factor"] == 8.0
    assert hf_cfg.rope_parameters["rope_theta"] == 500000.0
    assert TINY_CONFIGS["linear-rope"].to_hf().rope_parameters["rope_type"] == "linear"
    assert TINY_CONFIGS["gqa"].to_hf().rope_parameters["rope_type"] == "default"


def test_from_transformers_4_style_dict():
    """config.json written by transformers 4.x: rope_theta at the top, rope_scaling with 'type'."""
    d = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 128,
         "rms_norm_eps": 1e-6, "rope_theta": 123456.0, "rope_scaling": {"type": "linear", "factor": 2.0},
         "max_position_embeddings": 512, "tie_word_embeddings": True, "eos_token_id": [5, 6],
         "bos_token_id": 4}
    cfg = LlamaConfig.from_hf(d)
    assert cfg.rope_theta == 123456.0
    assert cfg.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert cfg.head_dim == 8 and cfg.n_kv_heads == 2 and cfg.norm_eps == 1e-6
    assert cfg.eos_token_id == (5, 6) and cfg.tie_word_embeddings
    # no num_key_value_heads: MHA; no rope at all: theta 10000, no scaling
    d2 = {k: v for k, v in d.items() if k not in ("num_key_value_heads", "rope_theta", "rope_scaling")}
    cfg2 = LlamaConfig.from_hf(d2)
    assert cfg2.n_kv_heads == 8 and cfg2.rope_theta == 10000.0 and cfg2.rope_scaling is None


def _hf_inv_freq(cfg: LlamaConfig) -> torch.Tensor:
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    return LlamaRotaryEmbedding(cfg.to_hf()).inv_freq


@pytest.mark.parametrize("name", ["gqa", "llama3-rope", "linear-rope", "head-dim-48"])
def test_inv_freq_matches_transformers(name):
    cfg = TINY_CONFIGS[name]
    ours = cfg.inv_freq()
    assert ours.shape == (cfg.head_dim // 2,) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, _hf_inv_freq(cfg), atol=0, rtol=1e-6)


def test_inv_freq_llama3_8b_matches_transformers_and_is_scaled():
    cfg = NAMED_SHAPES["llama3-8b"]
    ours = cfg.inv_freq()
    torch.testing.assert_close(ours, _hf_inv_freq(cfg), atol=0, rtol=1e-6)
    plain = cfg.with_overrides(rope_scaling=None).inv_freq()
    assert torch.equal(ours[:8], plain[:8])  # high frequencies untouched
    torch.testing.assert_close(ours[-4:], plain[-4:] / 8.0)  # lowest frequencies divided by factor
    assert not torch.equal(ours, plain)


def test_linear_scaling_divides_every_frequency():
    cfg = TINY_CONFIGS["linear-rope"]
    torch.testing.assert_close(cfg.inv_freq(), cfg.with_overrides(rope_scaling=None).inv_freq() / 4.0)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_num_parameters_counts_the_transformers_model(name):
    cfg = TINY_CONFIGS[name]
    hf = make_hf(cfg)
    unique = {id(p): p.numel() for p in hf.parameters()}
    assert cfg.num_parameters() == sum(unique.values())
    embedding = 0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.dim
    assert cfg.num_parameters(include_embedding=False) == sum(unique.values()) - embedding


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_linear_shapes_are_the_models_linear_layers(name):
    """cfg.linear_shapes(): every nn.Linear of our Transformer, (out, in) as its weight; the rest of the parameters
    are the embedding, norms and biases."""
    from llama_fast.model import Transformer

    cfg = TINY_CONFIGS[name]
    with torch.device("meta"):
        model = Transformer(cfg)
    linears = {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert cfg.linear_shapes() == linears
    assert list(cfg.linear_shapes())[:4] == ["layers.0.attention.wqkv", "layers.0.attention.wo",
                                             "layers.0.feed_forward.w13", "layers.0.feed_forward.w2"]
    biases = (cfg.q_size + 2 * cfg.kv_size + cfg.dim if cfg.attention_bias else 0) + \
        (2 * cfg.intermediate_size + cfg.dim if cfg.mlp_bias else 0)
    rest = cfg.n_layers * (2 * cfg.dim + biases) + cfg.dim  # norms and biases
    embedding = 0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.dim  # a tied head is the embedding
    assert sum(n * k for n, k in linears.values()) + rest + embedding == cfg.num_parameters()


def test_named_shape_table():
    tiny = NAMED_SHAPES["tiny"]
    assert (tiny.vocab_size, tiny.dim, tiny.n_layers, tiny.n_heads, tiny.n_kv_heads) == (512, 128, 2, 4, 2)
    for name in ("llama-7b", "llama2-7b"):
        c = NAMED_SHAPES[name]
        assert (c.vocab_size, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.intermediate_size) == \
            (32000, 4096, 32, 32, 32, 128, 11008)
        assert not c.tie_word_embeddings and c.rope_scaling is None and c.rope_theta == 10000.0
    assert NAMED_SHAPES["llama-7b"].max_position_embeddings == 2048
    assert NAMED_SHAPES["llama2-7b"].max_position_embeddings == 4096
    l3 = NAMED_SHAPES["llama3-8b"]
    assert (l3.vocab_size, l3.dim, l3.n_layers, l3.n_heads, l3.n_kv_heads, l3.intermediate_size) == \
        (128256, 4096, 32, 32, 8, 14336)
    assert l3.rope_theta == 500000.0 and l3.rope_scaling["rope_type"] == "llama3"
    assert l3.eos_token_id == (128001, 128008, 128009)


def test_llama_7b_parameter_bytes():
    """The seed table's weight bytes: fp16 non-embedding (output head included) ~13.21e9, total ~13.477e9."""
    c = NAMED_SHAPES["llama-7b"]
    assert c.num_parameters(include_embedding=False) == 6_607_343_616
    assert c.num_parameters() == 6_738_415_616
    assert c.num_parameters(include_embedding=False) * 2 == pytest.approx(13.21e9, rel=1e-3)
    assert c.num_parameters() * 2 == pytest.approx(13.477e9, rel=1e-3)
    assert NAMED_SHAPES["llama2-7b"].num_parameters() == c.num_parameters()
    assert NAMED_SHAPES["llama3-8b"].num_parameters() == 8_030_261_248  # Meta's 8.03B


def test_kv_cache_bytes():
    c = NAMED_SHAPES["llama3-8b"]
    # 2 (k, v) * 32 layers * 8 kv heads * 128 head_dim * 2 bytes = 131072 bytes per token
    assert c.kv_cache_bytes(1, 1, torch.float16) == 131072
    assert c.kv_cache_bytes(4, 1000, torch.float32) == 131072 * 2 * 4 * 1000


def test_head_dim_default_and_explicit():
    assert LlamaConfig(dim=64, n_heads=4).head_dim == 16
    c = TINY_CONFIGS["head-dim-48"]
    assert c.q_size == 192 and c.kv_size == 96 and c.dim == 64


# ------------------------------------------------------------------------------------------- refusals
def test_heads_not_multiple_of_kv_heads():
    with pytest.raises(ConfigError, match="n_heads=6 is not a multiple of n_kv_heads=4"):
        LlamaConfig(dim=48, n_heads=6, n_kv_heads=4)


def test_unsupported_rope_type():
    with pytest.raises(ConfigError, match="rope type 'yarn' is not supported"):
        LlamaConfig(rope_scaling={"rope_type": "yarn", "factor": 4.0})
    d = TINY_CONFIGS["gqa"].to_hf().to_dict()
    d["rope_parameters"] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(ConfigError, match="dynamic"):
        LlamaConfig.from_hf(d)


def test_non_llama_config_names_the_architecture():
    from transformers import GPT2Config, MistralConfig

    with pytest.raises(ConfigError, match="GPT2LMHeadModel.*model_type='gpt2'.*Llama architectures only"):
        LlamaConfig.from_hf({**GPT2Config().to_dict(), "architectures": ["GPT2LMHeadModel"]}, name="x")
    with pytest.raises(ConfigError, match="'mistral'"):
        LlamaConfig.from_hf(MistralConfig())


def test_unsupported_activation():
    d = TINY_CONFIGS["gqa"].to_hf().to_dict()
    d["hidden_act"] = "gelu"
    with pytest.raises(ConfigError, match="hidden_act 'gelu'"):
        LlamaConfig.from_hf(d)


def test_with_overrides():
    c = TINY_CONFIGS["gqa"]
    assert c.with_overrides(n_layers=5).n_layers == 5
    with pytest.raises(ConfigError, match=r"unknown config fields: \['layers'\]"):
        c.with_overrides(layers=5)
