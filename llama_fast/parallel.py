"""Tensor parallelism over torch.distributed (Megatron-style), launched by torchrun.

Each of the N ranks holds a shard of every block:
  - attention.wqkv: the q rows of its n_heads/N heads, then the k and v rows of its KV heads (split by output
    row, so the per-rank layout is the one a model with n_heads/N heads expects);
  - attention.wo: the input columns of its heads; feed_forward.w13: its slice of the gate rows, then the same
    slice of the up rows; feed_forward.w2: the matching input columns;
  - the partial products of wo and w2 are summed over the ranks by one all-reduce each (Block.forward and the
    fused Block.fused_decode), through torch.distributed._functional_collectives so torch.compile traces them
    and the decode step's CUDA graph captures them;
  - the embedding, the norms and the output head are replicated (every rank computes the full logits, so every
    rank picks the same token without another collective); a bias of wo / w2 is held by rank 0 only (zeros
    elsewhere), so the sum adds it once.
KV heads are split when n_kv_heads % N == 0; otherwise they are replicated (a warning says so): each rank holds
the KV heads its query heads read. A rank runs the model config shard_config() returns.

Each rank reads only its slices: a safetensors checkpoint through safe_open(...).get_slice; a source that can
only hand out whole tensors (random:<shape>, pytorch_model*.bin) gives one full projection at a time, sliced and
dropped at once, so the whole model never sits in one process.
"""
from __future__ import annotations

import atexit
import os
import warnings
from dataclasses import replace
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from .config import LlamaConfig

TORCHRUN_HINT = "launch it with torchrun --nproc-per-node N (N = --tp)"


class ParallelError(ValueError):
    """A tensor-parallel setting that cannot run: a degree not dividing the model, no process group, ..."""


def check_tp(cfg: LlamaConfig, tp: int):
    """Refuse a degree that does not divide the model's heads and hidden size (ParallelError)."""
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise ParallelError(f"tp must be an integer >= 1, got {tp!r}")
    if cfg.n_heads % tp:
        raise ParallelError(f"tp {tp} does not divide the model's {cfg.n_heads} attention heads")
    if cfg.intermediate_size % tp:
        raise ParallelError(f"tp {tp} does not divide the model's intermediate size {cfg.intermediate_size}")


def kv_heads_of_rank(cfg: LlamaConfig, rank: int, tp: int) -> list[int]:
    """The model's KV heads rank holds, in its local order: n_kv_heads/tp contiguous heads when tp divides
    n_kv_heads; else the KV heads its query heads read (one when n_kv_heads divides tp, else one per query head)."""
    heads, kv = cfg.n_heads // tp, cfg.n_kv_heads
    if kv % tp == 0:
        per = kv // tp
        return list(range(rank * per, (rank + 1) * per))
    group = cfg.n_heads // kv  # query heads per KV head
    needed = [h // group for h in range(rank * heads, (rank + 1) * heads)]
    if tp % kv == 0:  # every query head of the rank reads the same KV head
        return needed[:1]
    return needed


def kv_replicated(cfg: LlamaConfig, tp: int) -> bool:
    return tp > 1 and cfg.n_kv_heads % tp != 0


def shard_config(cfg: LlamaConfig, tp: int) -> LlamaConfig:
    """The config one rank runs: n_heads/tp heads, its KV heads, intermediate_size/tp (head_dim unchanged)."""
    check_tp(cfg, tp)
    if tp == 1:
        return cfg
    return replace(cfg, n_heads=cfg.n_heads // tp, n_kv_heads=len(kv_heads_of_rank(cfg, 0, tp)),
                   head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size // tp)


def _head_ranges(heads: list[int], head_dim: int) -> list[tuple[int, int]]:
    """Row ranges [lo, hi) of the given heads, contiguous heads merged."""
    ranges: list[tuple[int, int]] = []
    for h in heads:
        lo, hi = h * head_dim, (h + 1) * head_dim
        if ranges and ranges[-1][1] == lo:
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))
    return ranges


# A reader gives the concatenation (along dim) of the row / column ranges of one HF-named tensor.
Reader = Callable[[str, int, list[tuple[int, int]]], torch.Tensor]


def whole_tensor_reader(get: Callable[[str], torch.Tensor]) -> Reader:
    """A Reader over a source of whole tensors: each read fetches the tensor once, copies its ranges out and
    drops it."""
    def read(name: str, dim: int, ranges: list[tuple[int, int]]) -> torch.Tensor:
        full = get(name)
        parts = [full.narrow(dim, lo, hi - lo) for lo, hi in ranges]
        out = parts[0].clone() if len(parts) == 1 else torch.cat(parts, dim=dim)
        del full, parts
        return out
    return read


class ShardedSource:
    """HF-named tensors of one rank's shard, as a source for loading.build_model with shard_config(cfg, tp).

    Reads through `read` (a Reader) only the ranges the rank holds; replicated tensors are read whole."""

    def __init__(self, cfg: LlamaConfig, rank: int, tp: int, read: Reader):
        check_tp(cfg, tp)
        self.cfg, self.rank, self.tp, self.read = cfg, rank, tp, read
        d, heads = cfg.head_dim, cfg.n_heads // tp
        self.q_ranges = _head_ranges(list(range(rank * heads, (rank + 1) * heads)), d)
        self.kv_ranges = _head_ranges(kv_heads_of_rank(cfg, rank, tp), d)
        per = cfg.intermediate_size // tp
        self.mlp_ranges = [(rank * per, (rank + 1) * per)]

    def __call__(self, name: str) -> torch.Tensor:
        leaf = name.rsplit(".", 2)[-2:]  # e.g. ["q_proj", "weight"]
        proj, kind = leaf[0], leaf[-1]
        if proj == "q_proj":
            return self.read(name, 0, self.q_ranges)
        if proj in ("k_proj", "v_proj"):
            return self.read(name, 0, self.kv_ranges)
        if proj in ("gate_proj", "up_proj"):
            return self.read(name, 0, self.mlp_ranges)
        if proj in ("o_proj", "down_proj"):
            if kind == "weight":
                return self.read(name, 1, self.q_ranges if proj == "o_proj" else self.mlp_ranges)
            bias = self.read(name, 0, [(0, self.cfg.dim)])  # summed by the all-reduce: rank 0's alone counts
            return bias if self.rank == 0 else torch.zeros_like(bias)
        return self.read(name, 0, [(0, _rows(self.cfg, name))])


def _rows(cfg: LlamaConfig, name: str) -> int:
    """Dim-0 size of a replicated HF tensor (embedding, head: vocab; norms: dim)."""
    return cfg.vocab_size if name.endswith(("embed_tokens.weight", "lm_head.weight")) else cfg.dim


def warn_replication(cfg: LlamaConfig, tp: int):
    """Say what is replicated rather than split at this degree."""
    if kv_replicated(cfg, tp):
        warnings.warn(f"tp {tp} does not divide the model's {cfg.n_kv_heads} KV heads: each rank holds a copy of "
                      "the KV heads its query heads read (their weights and KV cache are replicated)",
                      UserWarning, stacklevel=3)


# --------------------------------------------------------------------------------------- process group
def env_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment, or None outside torchrun."""
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    except (KeyError, ValueError):
        return None


def init_from_env(tp: int, device: torch.device) -> tuple[int, int]:
    """(rank, world size) of the default process group, initialized from torchrun's environment (gloo on CPU,
    nccl on CUDA) unless one already exists, which is used as is. Refuses (ParallelError) a world size other
    than tp, or no group and no torchrun environment."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        env = env_world()
        if env is None:
            raise ParallelError(f"tp {tp} needs a process group of {tp} processes: {TORCHRUN_HINT}")
        rank, world, _ = env
        if world != tp:
            raise ParallelError(f"tp {tp} needs {tp} processes, torchrun started {world}: {TORCHRUN_HINT}")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=collective_timeout())
        # the group made here is torn down here: left to interpreter shutdown, its threads may abort the process
        atexit.register(_destroy_group)
    if world != tp:
        raise ParallelError(f"tp {tp} needs a process group of {tp} processes; this one has {world}")
    return rank, world


def collective_timeout() -> timedelta:
    """How long a collective may wait for a rank before the group fails (LLAMA_FAST_DIST_TIMEOUT seconds,
    default 300: a cold compile on one rank can keep the others waiting at their first collective for minutes).
    A rank that dies is caught sooner by torchrun, which stops the other ranks as soon as one exits non-zero."""
    raw = os.environ.get("LLAMA_FAST_DIST_TIMEOUT", "300")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ParallelError(f"LLAMA_FAST_DIST_TIMEOUT must be a number of seconds > 0, got {raw!r}")
    return timedelta(seconds=seconds)


def _destroy_group():
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK for a CUDA device without an index under torchrun."""
    env = env_world()
    if device.type == "cuda" and device.index is None and env is not None:
        if env[2] >= torch.cuda.device_count():
            raise ParallelError(f"local rank {env[2]} has no GPU: this host has {torch.cuda.device_count()}")
        return torch.device("cuda", env[2])
    return device


def all_reduce_sum(t: torch.Tensor, group) -> torch.Tensor:
    """The sum of t over the group's ranks (a functional collective: traceable by torch.compile; run eagerly,
    as in the fused decode block, it is waited for here so the Triton ops after it get a plain tensor)."""
    out = funcol.all_reduce(t, "sum", group)
    return out.wait() if isinstance(out, funcol.AsyncCollectiveTensor) else out


def install_group_(model, group, tp: int, rank: int = 0):
    """Make a model built from rank's shard sum its wo and w2 outputs over group (one all-reduce each, in the
    compiled blocks and in the fused batch-1 decode block alike)."""
    model.tp = tp
    if tp == 1:
        return model
    w = model.tok_embeddings.weight
    zeros = torch.zeros(1, model.config.dim, dtype=w.dtype, device=w.device)
    for layer in model.layers:
        layer.tp_group, layer.tp_rank, layer.tp_zeros = group, rank, zeros
    return model
