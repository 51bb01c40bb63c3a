"""The public entry points: load_model and output_hash."""
from __future__ import annotations

import hashlib
import os

import torch

from .generate import LlamaFast
from .loading import (build_weights, load_tokenizer, parse_dtype, quantization_of, random_config, read_config,
                      resolve_checkpoint, tp_layer_schemes, warm_up_meta_device)
from .model import ForwardOptions
from .quant import QuantScheme


# cuBLAS keeps one workspace per handle and stream, 32 MiB by default on Hopper. Prefill GEMMs of
# Llama-7B do not need it: 8 MiB kept the peak at the seed workload 25 MB lower at no measured prefill cost
# (docs/PERF.md). Read once, at the process's first cuBLAS workspace allocation.
CUBLAS_WORKSPACE_CONFIG = ":4096:2"


def limit_cublas_workspace() -> str:
    """Set CUBLAS_WORKSPACE_CONFIG to 8 MiB unless the user set it; call before the first CUDA matmul (the CLI
    and the benchmark suite do). Returns the value in force."""
    return os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)


class DeviceError(ValueError):
    """A device or dtype this machine cannot run."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' requested but CUDA is not available on this machine")
    return dev


def check_dtype_on_device(dtype: torch.dtype, device: torch.device):
    """Refuse a dtype the device cannot compute in (e.g. bf16 on a pre-Ampere GPU)."""
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"bf16 is not supported on {torch.cuda.get_device_name(device)}")
    if device.type == "cpu" and dtype == torch.float16:
        try:  # a tiny half matmul answers whether this CPU build computes in fp16
            torch.ones(2, 2, dtype=dtype) @ torch.ones(2, 2, dtype=dtype)
        except RuntimeError as e:
            raise DeviceError(f"fp16 is not supported on this CPU ({e})") from None


def load_model(name: str = "smollm2-135m", device: str | torch.device | None = "auto",
               dtype: str | torch.dtype | None = None, *, seed: int = 0, compile: str = "no",
               options: ForwardOptions | None = None, prefill_chunk: int | None = None,
               cache_length: int | None = None, quantize: str | QuantScheme | None = None,
               tp: int = 1, tp_head: str | None = None, tp_allreduce: str | None = None) -> LlamaFast:
    """Load any accepted model name (see llama_fast.loading) and return a LlamaFast.

    dtype: a torch.dtype or one of the names the CLI's --dtype takes (loading.DTYPE_NAMES: fp16|float16|half,
    bf16|bfloat16, fp32|float32|float); default fp16 on GPU, fp32 on CPU. The tokenizer is
    loading.load_tokenizer(name)'s: a checkpoint without tokenizer files gets the id tokenizer, with a warning.

    quantize: None, or a weight-only scheme of llama_fast.quant: "int8" (one scale per output channel), "int4"
    (= "int4:g128"), "int4:g32", "int4:g64", "int4:g128" (a scale and an offset per group along K). Each linear
    weight is quantized (round-to-nearest) as it is loaded; a full-precision copy of the model never exists.
    A quantized checkpoint directory (`llama-fast quantize`) loads as saved, with quantize None or its scheme.

    The returned object's `quantize` is the scheme its weights carry (canonical name, or None) and
    `load_peak_bytes` the most memory the weights' load held at once beyond what the process held before it
    (CUDA: max_memory_allocated; CPU: peak resident set size, which counts only newly touched pages).

    tp: tensor-parallel degree (llama_fast.parallel). With tp > 1 this process is one of tp ranks: inside an
    initialized default process group of tp processes, or one initialized here from torchrun's environment
    (gloo on CPU, nccl on CUDA, device cuda:LOCAL_RANK); it loads only its shard, and every rank generates the
    same tokens. tp must divide n_heads and intermediate_size (parallel.ParallelError otherwise). Quantized
    weights (quantize, or a quantized checkpoint) shard too; int4 needs each rank's K of wo and w2 to be a multiple
    of the group (ParallelError otherwise).

    tp_head: the output head's layout with tp > 1: "replicated" (every rank holds the whole head and computes
    all logits) or "vocab" (each rank holds a slice of the vocabulary's rows, the logits are all-gathered);
    None: $LLAMA_FAST_TP_HEAD, else "replicated".

    tp_allreduce: how the blocks' all-reduces run with tp > 1: "nccl" (the process group's backend), "symm"
    (CUDA only: messages up to parallel.SYMM_MAX_BYTES by a one-shot all-reduce over symmetric memory, the
    larger ones through NCCL) or "fused" (as "symm", and the batch-1 decode block's all-reduces by llama_fast's
    own one-shot kernel with the next RMSNorm's partials in it: kernels/allreduce.py) or "auto" ("fused" where
    parallel.symmetric_memory_usable: one host, peer-accessible GPUs of compute capability 9.0 or newer; else
    "nccl"); None: $LLAMA_FAST_TP_ALLREDUCE, else "auto"."""
    from .harness import PeakMemory  # harness imports this module

    dev = resolve_device(device)
    dt = parse_dtype(dtype if dtype is not None else ("fp16" if dev.type == "cuda" else "fp32"))
    check_dtype_on_device(dt, dev)
    scheme = quantization_of(name, quantize)
    rank, group, head, allreduce = 0, None, "replicated", "nccl"
    if tp != 1:
        import torch.distributed as dist

        from . import parallel

        cfg = random_config(name) if name.startswith("random:") else read_config(resolve_checkpoint(name), name)
        # before any rendezvous: every rank refuses the same way
        head, allreduce = parallel.check_plan(cfg, tp, dev, tp_head, tp_allreduce, tp_layer_schemes(name, quantize))
        dev = parallel.rank_device(dev)
        rank, _ = parallel.init_from_env(tp, dev)
        group = dist.group.WORLD
    warm_up_meta_device()  # torch's one-time meta-device setup is not the load's memory
    with PeakMemory(dev) as mem:
        _, model = build_weights(name, dev, dt, seed=seed, quantize=quantize, tp=tp, rank=rank, tp_head=head)
    if tp != 1:
        parallel.install_group_(model, group, tp, rank, head, allreduce)
    tokenizer = load_tokenizer(name)
    fast = LlamaFast(model, tokenizer, name, options=options, compile=compile, prefill_chunk=prefill_chunk,
                     cache_length=cache_length)
    fast.quantize = scheme
    fast.load_peak_bytes = mem.growth
    return fast


def output_hash(tokenizer, output_ids: torch.Tensor) -> str:
    """The seed's hash: first 8 hex chars of sha256 of str(tokenizer.batch_decode(output_ids))."""
    return hashlib.sha256(str(tokenizer.batch_decode(output_ids)).encode()).hexdigest()[:8]
