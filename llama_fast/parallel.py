"""Tensor parallelism over torch.distributed (Megatron-style), launched by torchrun.

Each of the N ranks holds a shard of every block:
  - attention.wqkv: the q rows of its n_heads/N heads, then the k and v rows of its KV heads (split by output
    row, so the per-rank layout is the one a model with n_heads/N heads expects);
  - attention.wo: the input columns of its heads; feed_forward.w13: its slice of the gate rows, then the same
    slice of the up rows; feed_forward.w2: the matching input columns;
  - the partial products of wo and w2 are summed over the ranks by one all-reduce each (Block.forward and the
    fused Block.fused_decode), through torch.distributed._functional_collectives so torch.compile traces them
    and the decode step's CUDA graph captures them;
  - the embedding and the norms are replicated; a bias of wo / w2 is held by rank 0 only (zeros elsewhere), so
    the sum adds it once;
  - the output head is replicated (HEAD_REPLICATED, the default: every rank computes the full logits and picks
    the same token without another collective) or vocabulary-parallel (HEAD_VOCAB, LLAMA_FAST_TP_HEAD=vocab or
    load_model(tp_head="vocab")): each rank holds ceil(V/N) rows of the head (the last rank's tail padded with
    zero rows; a head tied to the embedding is untied, the embedding staying whole) and the logits are
    all-gathered before the pick.
Quantized weights (llama_fast.quant) shard the same way: int8 scales are per output row, so they are split with
the rows of wqkv / w13 and replicated for wo / w2, whose rows are whole (their scales come from the full rows, so
a rank reads its wo / w2 whole, one at a time, to quantize them); int4 groups run along K, so wo / w2 (split
along K) need each rank's K to be a multiple of the group (ParallelError otherwise: check_quant_split).
KV heads are split when n_kv_heads % N == 0; otherwise they are replicated (a warning says so): each rank holds
the KV heads its query heads read. A rank runs the model config shard_config() returns.

Each rank reads only its slices: a safetensors checkpoint through safe_open(...).get_slice; a source that can
only hand out whole tensors (random:<shape>, pytorch_model*.bin) gives one full projection at a time, sliced and
dropped at once, so the whole model never sits in one process. A quantized checkpoint directory (our tensor
names, llama-fast quantize) is sliced the same way by QuantizedShardSource.
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

from . import quant
from .config import LlamaConfig
from .quant import QuantScheme

TORCHRUN_HINT = "launch it with torchrun --nproc-per-node N (N = --tp)"


HEAD_REPLICATED, HEAD_VOCAB = "replicated", "vocab"
HEAD_MODES = (HEAD_REPLICATED, HEAD_VOCAB)
HEAD_ENV = "LLAMA_FAST_TP_HEAD"  # the output head's layout when load_model(tp_head=None)
SPLIT_K_LAYERS = ("attention.wo", "feed_forward.w2")  # split along their input (K), their rows whole


class ParallelError(ValueError):
    """A tensor-parallel setting that cannot run: a degree not dividing the model, no process group, ..."""


def _choice(value: str | None, param: str, env: str, modes: tuple[str, ...]) -> str:
    """value, else $env, else modes[0] (the default); ParallelError naming param or env for anything else."""
    raw = value if value is not None else os.environ.get(env, "") or modes[0]
    if raw not in modes:
        raise ParallelError(f"{param if value is not None else env} must be one of {', '.join(modes)}, got {raw!r}")
    return raw


def head_mode(value: str | None = None) -> str:
    """The output head's layout under tensor parallelism: value, else $LLAMA_FAST_TP_HEAD, else HEAD_REPLICATED
    (ParallelError for anything but HEAD_MODES)."""
    return _choice(value, "tp_head", HEAD_ENV, HEAD_MODES)


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


def shard_config(cfg: LlamaConfig, tp: int, head: str = HEAD_REPLICATED) -> LlamaConfig:
    """The config one rank runs: n_heads/tp heads, its KV heads, intermediate_size/tp (head_dim unchanged).
    With HEAD_VOCAB the head is untied from the embedding (its rows are a slice, head_rows(cfg, tp); the
    embedding and vocab_size stay whole)."""
    check_tp(cfg, tp)
    if tp == 1:
        return cfg
    untie = {"tie_word_embeddings": False} if head == HEAD_VOCAB else {}
    return replace(cfg, n_heads=cfg.n_heads // tp, n_kv_heads=len(kv_heads_of_rank(cfg, 0, tp)),
                   head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size // tp, **untie)


def head_rows(cfg: LlamaConfig, tp: int) -> int:
    """Rows of a vocabulary-parallel head on each rank: ceil(vocab_size / tp) (the last rank's padded)."""
    return -(-cfg.vocab_size // tp)


def vocab_range(cfg: LlamaConfig, rank: int, tp: int) -> tuple[int, int]:
    """The vocabulary rows [lo, hi) rank's head holds (hi - lo < head_rows on a padded last rank)."""
    per = head_rows(cfg, tp)
    return min(rank * per, cfg.vocab_size), min((rank + 1) * per, cfg.vocab_size)


def check_head(cfg: LlamaConfig, tp: int, head: str):
    """Refuse a vocabulary-parallel head that would leave a rank without vocabulary rows (ParallelError)."""
    if head == HEAD_VOCAB and tp > 1 and (tp - 1) * head_rows(cfg, tp) >= cfg.vocab_size:
        raise ParallelError(f"tp {tp}: a vocabulary of {cfg.vocab_size} leaves the last rank no rows of a "
                            "vocabulary-parallel head (use the replicated head)")


def check_quant_split(cfg: LlamaConfig, tp: int, schemes: dict[str, QuantScheme | None] | None):
    """Refuse (ParallelError) int4 layers split along K (wo, w2) whose per-rank K is not a multiple of their
    group: a group would straddle two ranks. schemes: {layer: scheme} of the whole model (quant.layer_schemes or
    a quantized checkpoint's), None without quantization."""
    if tp == 1 or not schemes:
        return
    for layer, s in schemes.items():
        if s is None or s.bits != 4 or not layer.endswith(SPLIT_K_LAYERS):
            continue
        kind = layer.rsplit(".", 1)[-1]
        k = cfg.q_size if kind == "wo" else cfg.intermediate_size
        local = k // tp
        if local % s.group:
            fits = [f"int4:g{g}" for g in quant.INT4_GROUPS if local % g == 0]
            hint = f"choose {' or '.join(fits)}" if fits else "no int4 group divides it: use int8"
            raise ParallelError(f"tp {tp} splits the {kind} K = {k} into {local} per rank, not a multiple of its "
                                f"int4 group {s.group}: {hint}, or another tp")


def check_plan(cfg: LlamaConfig, tp: int, device: torch.device, tp_head: str | None = None,
               tp_allreduce: str | None = None,
               schemes: dict[str, QuantScheme | None] | None = None) -> tuple[str, str]:
    """Every check of a tensor-parallel request that needs no other rank (ParallelError on the first that fails),
    made by each rank before they meet, so all refuse alike: tp against the shape, the head layout (tp_head, else
    $LLAMA_FAST_TP_HEAD), int4 groups against the split K (schemes: quant layer schemes, None unquantized), the
    all-reduce (tp_allreduce, else $LLAMA_FAST_TP_ALLREDUCE) on device. -> (head layout, all-reduce mode)."""
    check_tp(cfg, tp)
    head = head_mode(tp_head)
    check_head(cfg, tp, head)
    check_quant_split(cfg, tp, schemes)
    return head, allreduce_mode(device, tp_allreduce)


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


def _shift(ranges: list[tuple[int, int]], by: int) -> list[tuple[int, int]]:
    return [(lo + by, hi + by) for lo, hi in ranges]


def _scaled(ranges: list[tuple[int, int]], div: int) -> list[tuple[int, int]]:
    """Ranges of K columns -> the same ranges in units of div columns (int4 bytes: 2, groups: G)."""
    return [(lo // div, hi // div) for lo, hi in ranges]


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t with zero rows appended up to rows (a padded last rank of a vocabulary-parallel head)."""
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))])


class ShardedSource:
    """HF-named tensors of one rank's shard, as a source for loading.build_model with shard_config(cfg, tp, head).

    Reads through `read` (a Reader) only the ranges the rank holds; replicated tensors are read whole. With an
    int8 scheme, wo / w2 are read whole (their per-row scales come from the full rows) and quantize_weight keeps
    the rank's columns of the quantized weight."""

    def __init__(self, cfg: LlamaConfig, rank: int, tp: int, read: Reader, *, scheme: QuantScheme | None = None,
                 head: str = HEAD_REPLICATED):
        check_tp(cfg, tp)
        self.cfg, self.rank, self.tp, self.read = cfg, rank, tp, read
        d, heads = cfg.head_dim, cfg.n_heads // tp
        self.q_ranges = _head_ranges(list(range(rank * heads, (rank + 1) * heads)), d)
        self.kv_ranges = _head_ranges(kv_heads_of_rank(cfg, rank, tp), d)
        per = cfg.intermediate_size // tp
        self.mlp_ranges = [(rank * per, (rank + 1) * per)]
        self.whole_k = scheme is not None and scheme.bits == 8
        self.vocab_head = head == HEAD_VOCAB

    def k_columns(self, kind: str) -> tuple[int, list[tuple[int, int]]]:
        """(full K, the rank's K ranges) of wo (kind "wo" / "o_proj") or w2 ("w2" / "down_proj")."""
        if kind in ("wo", "o_proj"):
            return self.cfg.q_size, self.q_ranges
        return self.cfg.intermediate_size, self.mlp_ranges

    def head(self, name: str) -> torch.Tensor:
        """The rank's rows of a vocabulary-parallel head tensor `name` (padded with zero rows to head_rows)."""
        lo, hi = vocab_range(self.cfg, self.rank, self.tp)
        return _pad_rows(self.read(name, 0, [(lo, hi)]), head_rows(self.cfg, self.tp))

    def rank0_bias(self, name: str) -> torch.Tensor:
        bias = self.read(name, 0, [(0, self.cfg.dim)])  # summed by the all-reduce: rank 0's alone counts
        return bias if self.rank == 0 else torch.zeros_like(bias)

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
            if kind == "bias":
                return self.rank0_bias(name)
            k, cols = self.k_columns(proj)
            return self.read(name, 1, [(0, k)] if self.whole_k else cols)
        if name == "lm_head.weight" and self.vocab_head:
            return self.head("model.embed_tokens.weight" if self.cfg.tie_word_embeddings else name)
        return self.read(name, 0, [(0, _rows(self.cfg, name))])

    def quantize_weight(self, layer: str, weight: torch.Tensor, scheme: QuantScheme) -> dict[str, torch.Tensor]:
        """quant.quantize_tensor of the rank's weight of `layer` (our name); an int8 wo / w2, read whole, is
        quantized whole and its qweight cut to the rank's columns (its scales, per whole row, kept)."""
        out = quant.quantize_tensor(weight, scheme)
        if self.whole_k and layer.endswith(SPLIT_K_LAYERS):
            _, cols = self.k_columns(layer.rsplit(".", 1)[-1])
            q = out["qweight"]
            out["qweight"] = torch.cat([q[:, lo:hi] for lo, hi in cols], dim=1)
            del q
        return out


class QuantizedShardSource(ShardedSource):
    """Tensors of one rank's shard of a quantized checkpoint (our tensor names, llama_fast.quant's format), as a
    source for loading.build_quantized_model with shard_config(cfg, tp, head): the rows of wqkv / w13 (qweight,
    scales, offsets, bias alike); the K columns of wo / w2 (int4 qweight: K/2 packed bytes; int4 scales and
    offsets: K/G groups; int8 scales, per whole row: whole); rank 0's wo / w2 bias; with HEAD_VOCAB the head's
    vocabulary rows (a tied head's from the embedding); everything else whole. schemes: {layer: scheme} of the
    checkpoint (check_quant_split has accepted them)."""

    def __init__(self, cfg: LlamaConfig, rank: int, tp: int, read: Reader,
                 schemes: dict[str, QuantScheme | None], head: str = HEAD_REPLICATED):
        super().__init__(cfg, rank, tp, read, head=head)
        self.schemes = schemes

    def __call__(self, name: str) -> torch.Tensor:
        layer, _, leaf = name.rpartition(".")
        kind = layer.rsplit(".", 1)[-1]
        c = self.cfg
        if kind == "wqkv":
            q, kv = c.q_size, c.kv_size
            return self.read(name, 0, self.q_ranges + _shift(self.kv_ranges, q) + _shift(self.kv_ranges, q + kv))
        if kind == "w13":
            return self.read(name, 0, self.mlp_ranges + _shift(self.mlp_ranges, c.intermediate_size))
        if kind in ("wo", "w2"):
            if leaf == "bias":
                return self.rank0_bias(name)
            _, cols = self.k_columns(kind)
            scheme = self.schemes.get(layer)
            if leaf == "weight" or (scheme.bits == 8 and leaf == "qweight"):
                return self.read(name, 1, cols)
            if scheme.bits == 8:  # scales, one per whole row
                return self.read(name, 0, [(0, c.dim)])
            return self.read(name, 1, _scaled(cols, 2 if leaf == "qweight" else scheme.group))
        if kind == "output" and self.vocab_head:
            return self.head("tok_embeddings.weight" if c.tie_word_embeddings else name)
        rows = c.vocab_size if kind in ("output", "tok_embeddings") else c.dim
        return self.read(name, 0, [(0, rows)])


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
        global _MADE_HERE
        _MADE_HERE = True
    if world != tp:
        raise ParallelError(f"tp {tp} needs a process group of {tp} processes; this one has {world}")
    return rank, world


EXIT_BARRIER_S = 30  # the longest a gloo rank waits for its peers at the end of a run (meet_before_exit)
_MADE_HERE = False  # whether init_from_env made the default group (and tears it down at exit)


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


def meet_before_exit() -> None:
    """After a run that ended well on every rank, over a gloo group init_from_env made: the ranks meet in a
    bounded barrier before the group is torn down at exit. A rank whose peer tears their pair down while a
    message is still on it can abort in gloo's worker thread ("terminate called without an active exception",
    exit -6) after its rows were written. A peer that does not come within EXIT_BARRIER_S (it failed: torchrun
    stops this rank too) is not waited for any longer. Only on success: a failing rank leaves at once."""
    if not (_MADE_HERE and dist.is_initialized() and dist.get_backend() == "gloo"):
        return
    try:
        dist.monitored_barrier(timeout=timedelta(seconds=EXIT_BARRIER_S), wait_all_ranks=True)
    except RuntimeError:  # a peer gone: nothing left to wait for
        return


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
    return _waited(funcol.all_reduce(t, "sum", group))


def _waited(out: torch.Tensor) -> torch.Tensor:
    """A functional collective's result as a plain tensor (an eager call returns one still in flight)."""
    return out.wait() if isinstance(out, funcol.AsyncCollectiveTensor) else out


# --------------------------------------------------------------------------------------- one-shot all-reduce
ALLREDUCE_AUTO, ALLREDUCE_NCCL, ALLREDUCE_SYMM, ALLREDUCE_FUSED = "auto", "nccl", "symm", "fused"
ALLREDUCE_MODES = (ALLREDUCE_AUTO, ALLREDUCE_NCCL, ALLREDUCE_SYMM, ALLREDUCE_FUSED)
ALLREDUCE_ENV = "LLAMA_FAST_TP_ALLREDUCE"
# Messages up to this size go through the one-shot all-reduce (a batch-1 decode step's are dim * 2 bytes: 8 KB
# at Llama-7B); larger ones (prefill chunks) through NCCL, whose ring reads each byte once per rank instead of
# once per peer.
SYMM_MAX_BYTES = 1 << 19
SYMM_DTYPES = (torch.float32, torch.bfloat16)  # what torch.ops.symm_mem's one-shot kernels take


def allreduce_mode(device: torch.device, value: str | None = None) -> str:
    """How the blocks' all-reduces run: value, else $LLAMA_FAST_TP_ALLREDUCE, else ALLREDUCE_AUTO, resolved here to
    one of the others. ALLREDUCE_NCCL: the process group's backend (NCCL on GPUs, gloo on CPU). ALLREDUCE_SYMM,
    the one-shot all-reduce over symmetric memory (SymmAllReduce), needs CUDA and a torch with
    torch.ops.symm_mem's one-shot all-reduce; refused otherwise (ParallelError), before any rank meets the
    others. ALLREDUCE_FUSED: the same, and the batch-1 decode block's all-reduces by llama_fast's own one-shot
    kernel (kernels/allreduce.py: the sum, its rounding and the next RMSNorm's partials in one launch).
    ALLREDUCE_AUTO: ALLREDUCE_FUSED where symmetric_memory_usable says it can run, else ALLREDUCE_NCCL."""
    raw = _choice(value, "tp_allreduce", ALLREDUCE_ENV, ALLREDUCE_MODES)
    if raw == ALLREDUCE_AUTO:
        return ALLREDUCE_FUSED if symmetric_memory_usable(device) else ALLREDUCE_NCCL
    if raw in (ALLREDUCE_SYMM, ALLREDUCE_FUSED):
        if device.type != "cuda":
            raise ParallelError(f"{ALLREDUCE_ENV}={raw} needs CUDA GPUs: the one-shot all-reduce runs over "
                                f"symmetric GPU memory, which gloo on {device.type} does not have")
        if _symm_op() is None:
            raise ParallelError(f"{ALLREDUCE_ENV}={raw}: torch {torch.__version__} has no "
                                "torch.ops.symm_mem.one_shot_all_reduce (use nccl)")
    return raw


def symmetric_memory_usable(device: torch.device) -> bool:
    """Whether the ranks can share symmetric GPU memory: CUDA, torch's one-shot all-reduce op, every rank on this
    host (torchrun's LOCAL_WORLD_SIZE equal to WORLD_SIZE: symmetric memory does not cross hosts), every rank's
    GPU visible here and each pair of them peer-accessible. The same answer on every rank of a host, from its
    environment and the driver, without meeting the others.

    And compute capability 9.0 or newer: the one-shot kernels (torch's barriers of system-scope atomics, ours
    stores into the peers' memory and spins on its own) were timed on NVLink-connected H200s only (docs/PERF.md);
    over PCIe peer-to-peer (an A10G host) neither their support nor their speed against NCCL was measured, so
    older GPUs keep NCCL unless asked."""
    if device.type != "cuda" or _symm_op() is None:
        return False
    if torch.cuda.get_device_capability(device) < (9, 0):
        return False
    world, local = os.environ.get("WORLD_SIZE"), os.environ.get("LOCAL_WORLD_SIZE")
    if world is None or local is None or world != local:
        return False
    n = int(world)
    if torch.cuda.device_count() < n:  # one GPU visible a rank: peer access cannot be asked for
        return False
    return all(torch.cuda.can_device_access_peer(i, j) for i in range(n) for j in range(n) if i != j)


def _symm_op() -> str | None:
    """The one-shot all-reduce of torch.ops.symm_mem this torch has: the copying one (the input copied into the
    symmetric buffer by the kernel itself), else the plain one (copied before it), else None."""
    for name in ("one_shot_all_reduce_copy", "one_shot_all_reduce"):
        if hasattr(torch.ops.symm_mem, name):
            return name
    return None


class SymmAllReduce:
    """A one-shot all-reduce over symmetric memory (torch.distributed._symmetric_memory) for the small messages
    of the decode step, where NCCL's ring costs ~25 us per 8 KB message inside the CUDA graph (docs/PERF.md):
    each rank writes its partial sum into its symmetric buffer and one kernel sums all peers' buffers.

    Two persistent buffers of SYMM_MAX_BYTES, allocated and rendezvoused here (a collective: every rank builds
    this at the same point, install_group_), one per call site (the attention's all-reduce, then the MLP's): two
    consecutive all-reduces never share a buffer, so a rank writing the next message cannot overwrite one a
    peer is still reading. A message is copied into a view of the buffer's first elements, so the op's inputs
    are fixed addresses: CUDA-graph capturable, traceable by torch.compile (a custom op with a meta kernel).
    torch's one-shot kernels take float32 and bfloat16 only, so an fp16 model's buffers are float32: the partial
    sum is widened on its way in and the result rounded back once (for two ranks the same fp16 number NCCL's
    sum gives). A larger message, or one of another dtype, goes through NCCL (all_reduce_sum).

    fused: two more buffers per site pair, in the model dtype, a slot per rank, all -0.0 (empty) from the start,
    for kernels.allreduce's one-shot kernel, which the batch-1 decode block calls through with_ss (its rank and
    peers from the rendezvous' handles), or for the residual GEMV that all-reduces its own rows (push_target)."""

    def __init__(self, group, device: torch.device, dtype: torch.dtype, sites: int = 2, fused: bool = False):
        import torch.distributed._symmetric_memory as symm_mem

        self.group, self.group_name, self.op = group, group.group_name, _symm_op()
        self.dtype = dtype
        self.buf_dtype = dtype if dtype in SYMM_DTYPES else torch.float32
        numel = SYMM_MAX_BYTES // torch.empty((), dtype=self.buf_dtype).element_size()
        enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
        if enable is not None:  # needed by older torch; deprecated (a FutureWarning) where the setup is automatic
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                enable(self.group_name)
        self.buffers = []
        for _ in range(sites):
            buf = symm_mem.empty(numel, dtype=self.buf_dtype, device=device)
            symm_mem.rendezvous(buf, self.group_name)
            self.buffers.append(buf)
        self.row_buffers, self.row_handles = [], []  # fused: (buffer, rendezvous handle) per site
        # fused: per site, the residual GEMV's count of its programs done (kernels.gemv.gemv_residual_allreduce)
        self.row_counters = [torch.zeros(1, dtype=torch.int32, device=device) for _ in range(sites if fused else 0)]
        for _ in range(sites if fused else 0):
            from .kernels.allreduce import empty_buffer_

            buf = symm_mem.empty(SYMM_MAX_BYTES // torch.empty((), dtype=dtype).element_size(), dtype=dtype,
                                 device=device)
            empty_buffer_(buf)
            torch.cuda.synchronize(device)  # empty before any peer can write: rendezvous waits for every rank
            self.row_handles.append(symm_mem.rendezvous(buf, self.group_name))
            self.row_buffers.append(buf)

    def __call__(self, t: torch.Tensor, site: int) -> torch.Tensor:
        if self._by_nccl(t, site):
            return all_reduce_sum(t, self.group)
        return self._one_shot(t, site).to(t.dtype).view(t.shape)

    def with_ss(self, t: torch.Tensor, site: int, pdl: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(the sum of t (1, K) over the ranks, its sum-of-squares partials) for the fused batch-1 decode block:
        out of a float32 buffer, the rounding to t's dtype and the partials are one kernel (kernels.row_narrow_ss)
        instead of two launches; with the fused mode, all of it one kernel of ours (kernels.allreduce), launched
        with programmatic dependent launch when pdl is set (and the GPU has it)."""
        from .kernels import row_narrow_ss, row_ss_partials

        target = self.push_target(t.numel(), t.dtype, site)
        if target is not None:
            from .kernels.allreduce import allreduce_ss

            return allreduce_ss(t.contiguous(), *target, pdl)
        if self._by_nccl(t, site):
            h = all_reduce_sum(t, self.group)
            return h, row_ss_partials(h)
        out = self._one_shot(t, site).view(t.shape)
        if out.dtype != t.dtype:
            return row_narrow_ss(out, t)
        return out, row_ss_partials(out)

    def push_target(self, n: int, dtype: torch.dtype, site: int) -> tuple | None:
        """(buffer_ptrs, rank, world, slot) of the fused mode's buffer of `site` for a row of n values of dtype,
        which with_ss's kernel, or the residual GEMV itself (kernels.gemv.gemv_residual_allreduce, with
        row_counters[site]), stores the row into; None where there is none (no fused buffers, another dtype, a
        row larger than a slot)."""
        if not self.row_handles or dtype != self.dtype:
            return None
        hdl = self.row_handles[site]
        slot = self.row_buffers[site].numel() // hdl.world_size
        return (hdl.buffer_ptrs_dev, hdl.rank, hdl.world_size, slot) if n <= slot else None

    def _by_nccl(self, t: torch.Tensor, site: int) -> bool:
        return t.numel() > self.buffers[site].numel() or t.dtype != self.dtype

    def _one_shot(self, t: torch.Tensor, site: int) -> torch.Tensor:
        """t summed over the ranks by the one-shot kernel: flat, in the buffer's dtype."""
        x, view = t.contiguous().view(-1), self.buffers[site][: t.numel()]
        if self.op == "one_shot_all_reduce_copy" and self.buf_dtype == t.dtype:
            return torch.ops.symm_mem.one_shot_all_reduce_copy(view, x, "sum", self.group_name)
        view.copy_(x)  # widened when the buffer is float32
        return torch.ops.symm_mem.one_shot_all_reduce(view, "sum", self.group_name)


def all_gather_vocab(t: torch.Tensor, group, vocab_size: int) -> torch.Tensor:
    """The ranks' vocabulary slices of the logits t (..., V/N) concatenated along the last dim, cut to
    vocab_size (a padded last rank's zero rows dropped); waited for like all_reduce_sum."""
    out = _waited(funcol.all_gather_tensor(t.contiguous(), t.dim() - 1, group))
    return out if out.shape[-1] == vocab_size else out[..., :vocab_size]


def install_group_(model, group, tp: int, rank: int = 0, head: str = HEAD_REPLICATED,
                   allreduce: str = ALLREDUCE_NCCL):
    """Make a model built from rank's shard sum its wo and w2 outputs over group (one all-reduce each, in the
    compiled blocks and in the fused batch-1 decode block alike; ALLREDUCE_SYMM: small ones by SymmAllReduce,
    ALLREDUCE_FUSED: also the batch-1 block's by kernels.allreduce); with HEAD_VOCAB, all-gather its logits. A
    collective with ALLREDUCE_SYMM or ALLREDUCE_FUSED: every rank calls it."""
    model.tp = tp
    if tp == 1:
        return model
    w = model.tok_embeddings.weight
    zeros = torch.zeros(1, model.config.dim, dtype=w.dtype, device=w.device)
    symm = (SymmAllReduce(group, w.device, w.dtype, fused=allreduce == ALLREDUCE_FUSED)
            if allreduce in (ALLREDUCE_SYMM, ALLREDUCE_FUSED) else None)
    for layer in model.layers:
        layer.tp_group, layer.tp_rank, layer.tp_zeros, layer.tp_symm = group, rank, zeros, symm
    if head == HEAD_VOCAB:
        model.tp_head_group = group
    return model
