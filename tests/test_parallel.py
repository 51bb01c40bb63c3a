"""Tensor parallelism (llama_fast.parallel): the sharding math in one process, then real runs under torchrun on
CPU (gloo, 2 processes) whose hashes must equal the single-process run's."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from core_helpers import TINY_CONFIGS, make_hf
from llama_fast import parallel, quant
from llama_fast.cli import main
from llama_fast.config import NAMED_SHAPES
from llama_fast.loading import RandomSource, SafetensorsSource, build_model, build_weights, save_quantized
from llama_fast.model import ForwardOptions, prepare_inputs

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120
RUN_FLAGS = ["--preallocate", "--dtype", "fp32", "--prompt-lengths", "8", "--new-tokens", "8", "--warmup-runs",
             "0", "--num-runs", "1"]


# ------------------------------------------------------------------------------------------- sharding math
def _build(cfg, source, tp: int, rank: int):
    if tp == 1:
        return build_model(cfg, source, "cpu", torch.float32)
    return build_model(parallel.shard_config(cfg, tp), parallel.ShardedSource(cfg, rank, tp, _reader(source)),
                       "cpu", torch.float32)


def _reader(source):
    return getattr(source, "read_ranges", None) or parallel.whole_tensor_reader(source)


def _block_outputs(model, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention output, MLP output) of block 0 on idx, before any all-reduce (a shard's partial sums)."""
    model.setup_caches(1, 16)
    pos = torch.arange(idx.shape[1])
    x, rope, mask = prepare_inputs(model, idx, pos, 0)
    layer, opts = model.layers[0], ForwardOptions()
    h = layer.attention_norm(x)
    return (layer.attention(h, rope, mask, pos, 0, opts),
            layer.feed_forward(layer.ffn_norm(torch.randn(x.shape, generator=torch.Generator().manual_seed(1))), opts))


# (config, tp): KV heads split (gqa/2, mha/4), one KV head per rank replicated (gqa/4, mqa/2), one KV head per
# query head (head-dim-32: 6 heads, 3 KV heads over 2 ranks), biases (split q/k/v, rank 0's wo / w2 bias)
SHARD_CASES = [("gqa", 2), ("mha", 4), ("gqa", 4), ("mqa", 2), ("head-dim-32", 2), ("mlp-bias", 2), ("tied", 2)]


@pytest.mark.parametrize("name,tp", SHARD_CASES, ids=[f"{n}-tp{t}" for n, t in SHARD_CASES])
def test_shards_sum_to_the_whole_block(name, tp):
    cfg = TINY_CONFIGS[name]
    source = RandomSource(cfg, 0, "cpu", torch.float32)
    idx = torch.randint(0, cfg.vocab_size, (1, 6), generator=torch.Generator().manual_seed(0))
    attn, mlp = _block_outputs(_build(cfg, source, 1, 0), idx)
    parts = [_block_outputs(_build(cfg, source, tp, r), idx) for r in range(tp)]
    torch.testing.assert_close(sum(p[0] for p in parts), attn, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sum(p[1] for p in parts), mlp, rtol=1e-5, atol=1e-6)
    assert not torch.equal(parts[0][0], attn)  # a shard alone is a partial sum


def test_shard_weights_concatenate_to_the_full_weights():
    cfg, tp = TINY_CONFIGS["gqa"], 2
    source = RandomSource(cfg, 0, "cpu", torch.float32)
    full = _build(cfg, source, 1, 0).layers[1]
    shards = [_build(cfg, source, tp, r).layers[1] for r in range(tp)]
    q, kv, n = cfg.q_size, cfg.kv_size, cfg.intermediate_size
    w = full.attention.wqkv.weight
    local_q, local_kv = q // tp, kv // tp
    cat = lambda ts, dim=0: torch.cat(ts, dim=dim)  # noqa: E731
    qkv = [s.attention.wqkv.weight for s in shards]
    assert torch.equal(cat([t[:local_q] for t in qkv]), w[:q])
    assert torch.equal(cat([t[local_q:local_q + local_kv] for t in qkv]), w[q:q + kv])
    assert torch.equal(cat([t[local_q + local_kv:] for t in qkv]), w[q + kv:])
    assert torch.equal(cat([s.attention.wo.weight for s in shards], 1), full.attention.wo.weight)
    w13 = [s.feed_forward.w13.weight for s in shards]
    assert torch.equal(cat([t[: n // tp] for t in w13]), full.feed_forward.w13.weight[:n])
    assert torch.equal(cat([t[n // tp:] for t in w13]), full.feed_forward.w13.weight[n:])
    assert torch.equal(cat([s.feed_forward.w2.weight for s in shards], 1), full.feed_forward.w2.weight)
    for s in shards:  # replicated
        assert torch.equal(s.attention_norm.weight, full.attention_norm.weight)


def test_safetensors_slices_equal_whole_tensor_slices(tmp_path):
    cfg = TINY_CONFIGS["head-dim-32"]  # non-contiguous KV rows (one KV head per query head)
    make_hf(cfg).save_pretrained(tmp_path)
    st = SafetensorsSource(tmp_path)
    for rank in range(2):
        sliced = parallel.ShardedSource(cfg, rank, 2, st.read_ranges)
        whole = parallel.ShardedSource(cfg, rank, 2, parallel.whole_tensor_reader(st))
        for name in ("model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.o_proj.weight",
                     "model.layers.0.mlp.down_proj.weight", "model.embed_tokens.weight"):
            assert torch.equal(sliced(name), whole(name)), name


def test_shard_config_and_kv_heads():
    tiny = NAMED_SHAPES["tiny"]  # 4 heads, 2 KV heads, intermediate 352
    local = parallel.shard_config(tiny, 2)
    assert (local.n_heads, local.n_kv_heads, local.head_dim, local.intermediate_size) == (2, 1, 32, 176)
    assert (local.q_size, local.kv_size) == (64, 32)
    assert parallel.kv_heads_of_rank(tiny, 1, 2) == [1]
    assert parallel.kv_heads_of_rank(tiny, 3, 4) == [1] and parallel.kv_replicated(tiny, 4)
    assert parallel.kv_heads_of_rank(TINY_CONFIGS["head-dim-32"], 1, 2) == [1, 2, 2]
    with pytest.raises(parallel.ParallelError, match="does not divide the model's 4 attention heads"):
        parallel.shard_config(tiny, 3)
    with pytest.raises(parallel.ParallelError, match="intermediate size 352"):
        parallel.check_tp(tiny.with_overrides(n_heads=6, n_kv_heads=6), 3)


def test_replicated_kv_heads_are_announced():
    with pytest.warns(UserWarning, match="does not divide the model's 1 KV heads"):
        parallel.warn_replication(TINY_CONFIGS["mqa"], 2)


# GQA with intermediate 128: each rank's K of wo (32) and w2 (64) is a multiple of the int4 group 32
GQA_INT4 = TINY_CONFIGS["gqa"].with_overrides(intermediate_size=128, name="gqa-int4")


@pytest.fixture(scope="module")
def gqa_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """The GQA_INT4 checkpoint (safetensors) and its quantized checkpoint directories (save_quantized)."""
    root = tmp_path_factory.mktemp("gqa")
    dirs = {"full": root / "full"}
    make_hf(GQA_INT4).save_pretrained(dirs["full"])
    for scheme in ("int8", "int4:g32"):
        dirs[scheme] = root / scheme.replace(":", "-")
        save_quantized(str(dirs["full"]), dirs[scheme], scheme, "cpu", torch.float32)
    return dirs


def _outputs(model, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(attention, MLP, head) outputs of block 0 and the head on idx's embeddings, before any collective."""
    model.setup_caches(1, 16)
    pos = torch.arange(idx.shape[1])
    x, rope, mask = prepare_inputs(model, idx, pos, 0)
    layer, opts = model.layers[0], ForwardOptions()
    return (layer.attention(layer.attention_norm(x), rope, mask, pos, 0, opts),
            layer.feed_forward(layer.ffn_norm(x), opts), model.output(model.norm(x)))


QUANT_SHARD_CASES = [("int8", "replicated"), ("int8", "vocab"), ("int4:g32", "replicated"), ("int4:g32", "vocab")]


@pytest.mark.parametrize("scheme,head", QUANT_SHARD_CASES, ids=[f"{s}-{h}" for s, h in QUANT_SHARD_CASES])
def test_quantized_shards_sum_to_the_whole_model(gqa_checkpoints, scheme, head):
    """Each rank quantizes its shard as the whole model quantizes those rows (int8: per whole row, int4: the
    same groups), so the dequantized partial products sum to the whole; a quantized checkpoint directory sliced
    in its own format gives the very same tensors."""
    src, cfg, tp = str(gqa_checkpoints["full"]), GQA_INT4, 2
    _, full = build_weights(src, "cpu", torch.float32, quantize=scheme)
    idx = torch.randint(0, cfg.vocab_size, (1, 6), generator=torch.Generator().manual_seed(0))
    attn, mlp, logits = _outputs(full, idx)
    shards = [build_weights(src, "cpu", torch.float32, quantize=scheme, tp=tp, rank=r, tp_head=head)[1]
              for r in range(tp)]
    parts = [_outputs(m, idx) for m in shards]
    torch.testing.assert_close(sum(p[0] for p in parts), attn, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sum(p[1] for p in parts), mlp, rtol=1e-5, atol=1e-6)
    assert not torch.equal(parts[0][1], mlp)  # a shard alone is a partial sum
    if head == "vocab":  # 97 rows: 49 per rank, the last padded with one zero row
        assert [p[2].shape[-1] for p in parts] == [49, 49]
        torch.testing.assert_close(torch.cat([p[2] for p in parts], -1)[..., :cfg.vocab_size], logits)
        assert torch.all(parts[1][2][..., -1] == 0)
    else:
        assert all(torch.equal(p[2], logits) for p in parts)
    for r, shard in enumerate(shards):
        _, saved = build_weights(str(gqa_checkpoints[scheme]), "cpu", torch.float32, tp=tp, rank=r, tp_head=head)
        mine, theirs = shard.state_dict(), saved.state_dict()
        assert mine.keys() == theirs.keys()
        for name in mine:
            assert torch.equal(mine[name], theirs[name]), (r, name)


def test_int8_split_layers_keep_whole_row_scales(gqa_checkpoints):
    src = str(gqa_checkpoints["full"])
    _, full = build_weights(src, "cpu", torch.float32, quantize="int8")
    shards = [build_weights(src, "cpu", torch.float32, quantize="int8", tp=2, rank=r)[1] for r in range(2)]
    for layer in ("attention.wo", "feed_forward.w2"):
        whole = full.layers[0].get_submodule(layer)
        local = [s.layers[0].get_submodule(layer) for s in shards]
        assert all(torch.equal(m.scales, whole.scales) for m in local)  # replicated: the rows are whole
        assert torch.equal(torch.cat([m.qweight for m in local], 1), whole.qweight)
    wqkv = [s.layers[0].attention.wqkv.scales for s in shards]
    assert wqkv[0].shape[0] == full.layers[0].attention.wqkv.scales.shape[0] // 2  # split with the rows


def test_vocab_head_unties_a_tied_head(tmp_path):
    cfg = TINY_CONFIGS["tied"]
    make_hf(cfg).save_pretrained(tmp_path)
    _, full = build_weights(str(tmp_path), "cpu", torch.float32)
    for r, (lo, hi) in enumerate([(0, 49), (49, 97)]):
        _, shard = build_weights(str(tmp_path), "cpu", torch.float32, tp=2, rank=r, tp_head="vocab")
        assert torch.equal(shard.tok_embeddings.weight, full.tok_embeddings.weight)  # the embedding stays whole
        assert shard.output.weight is not shard.tok_embeddings.weight
        assert torch.equal(shard.output.weight[: hi - lo], full.tok_embeddings.weight[lo:hi])
        assert shard.output.weight.shape[0] == 49


def test_int4_groups_must_not_straddle_ranks():
    tiny = NAMED_SHAPES["tiny"]  # w2 K 352: 176 per rank, no int4 group divides it
    with pytest.raises(parallel.ParallelError, match=r"tp 2 splits the w2 K = 352 into 176 per rank, not a multiple "
                                                     r"of its int4 group 32: no int4 group divides it: use int8"):
        parallel.check_quant_split(tiny, 2, quant.layer_schemes(tiny, "int4:g32", warn=False))
    with pytest.raises(parallel.ParallelError, match=r"wo K = 64 into 32 per rank.*group 64: choose int4:g32, or"):
        parallel.check_quant_split(GQA_INT4, 2, quant.layer_schemes(GQA_INT4, "int4:g64", warn=False))
    parallel.check_quant_split(GQA_INT4, 2, quant.layer_schemes(GQA_INT4, "int4:g32", warn=False))
    parallel.check_quant_split(tiny, 2, quant.layer_schemes(tiny, "int8", warn=False))  # rows whole: any K


def test_head_mode_knob(monkeypatch):
    monkeypatch.delenv(parallel.HEAD_ENV, raising=False)
    assert parallel.head_mode() == "replicated"
    monkeypatch.setenv(parallel.HEAD_ENV, "vocab")
    assert parallel.head_mode() == "vocab" and parallel.head_mode("replicated") == "replicated"
    monkeypatch.setenv(parallel.HEAD_ENV, "columns")
    with pytest.raises(parallel.ParallelError, match="LLAMA_FAST_TP_HEAD must be one of replicated, vocab, got "
                                                     "'columns'"):
        parallel.head_mode()
    with pytest.raises(parallel.ParallelError, match="leaves the last rank no rows"):
        parallel.check_head(TINY_CONFIGS["gqa"].with_overrides(vocab_size=5), 4, "vocab")


def test_allreduce_mode_knob(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(parallel.ALLREDUCE_ENV, raising=False)
    monkeypatch.setattr(parallel, "symmetric_memory_usable", lambda device: device.type == "cuda")
    assert parallel.allreduce_mode(cpu) == "nccl" and parallel.allreduce_mode(cuda) == "fused"  # auto
    monkeypatch.setattr(parallel, "symmetric_memory_usable", lambda device: False)
    assert parallel.allreduce_mode(cuda) == "nccl" and parallel.allreduce_mode(cuda, "auto") == "nccl"
    assert parallel.allreduce_mode(cuda, "symm") == "symm"  # the ops exist in this torch (their CUDA kernels on GPUs)
    monkeypatch.setenv(parallel.ALLREDUCE_ENV, "symm")
    with pytest.raises(parallel.ParallelError, match="LLAMA_FAST_TP_ALLREDUCE=symm needs CUDA GPUs: the one-shot "
                                                     "all-reduce runs over symmetric GPU memory, which gloo on cpu"):
        parallel.allreduce_mode(cpu)
    assert parallel.allreduce_mode(cpu, "nccl") == "nccl"  # the argument wins over the environment
    monkeypatch.setattr(parallel, "_symm_op", lambda: None)
    with pytest.raises(parallel.ParallelError, match=r"torch .* has no torch.ops.symm_mem.one_shot_all_reduce"):
        parallel.allreduce_mode(cuda)
    with pytest.raises(parallel.ParallelError, match=r"LLAMA_FAST_TP_ALLREDUCE=fused: torch .* has no "):
        parallel.allreduce_mode(cuda, "fused")
    with pytest.raises(parallel.ParallelError, match="LLAMA_FAST_TP_ALLREDUCE=fused needs CUDA GPUs"):
        parallel.allreduce_mode(cpu, "fused")
    monkeypatch.setenv(parallel.ALLREDUCE_ENV, "ring")
    with pytest.raises(parallel.ParallelError,
                       match="LLAMA_FAST_TP_ALLREDUCE must be one of auto, nccl, symm, fused, got 'ring'"):
        parallel.allreduce_mode(cpu)


@pytest.mark.parametrize("env, capability, count, peers, usable", [
    (dict(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2"), (9, 0), 2, True, True),
    (dict(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2"), (8, 6), 2, True, False),  # A10G: not measured, NCCL
    (dict(WORLD_SIZE="4", LOCAL_WORLD_SIZE="2"), (9, 0), 2, True, False),  # two hosts
    (dict(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2"), (9, 0), 1, True, False),  # one GPU visible a rank
    (dict(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2"), (9, 0), 2, False, False),  # no peer access
    ({}, (9, 0), 2, True, False),  # outside torchrun
])
def test_symmetric_memory_usable(monkeypatch, env, capability, count, peers, usable):
    """auto's choice: fused only on one host of peer-accessible GPUs of compute capability 9.0 or newer."""
    for k in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "can_device_access_peer", lambda i, j: peers)
    assert parallel.symmetric_memory_usable(torch.device("cuda", 0)) is usable
    assert parallel.symmetric_memory_usable(torch.device("cpu")) is False
    monkeypatch.setattr(parallel, "_symm_op", lambda: None)
    assert parallel.symmetric_memory_usable(torch.device("cuda", 0)) is False


def test_symm_allreduce_dispatch(monkeypatch):
    """SymmAllReduce's routing, its op replaced by a stand-in (the kernels run on GPUs only): a small message is
    copied into the first elements of its call site's buffer, the two sites use different buffers, a message
    over SYMM_MAX_BYTES or of another dtype goes through all_reduce_sum."""
    calls = []

    def one_shot_copy(buf, x, op, group_name):
        calls.append((buf, group_name))
        buf.copy_(x)
        return 2 * buf  # what two ranks holding the same partial sum get

    monkeypatch.setattr(torch.ops.symm_mem, "one_shot_all_reduce_copy", one_shot_copy, raising=False)
    monkeypatch.setattr(parallel, "all_reduce_sum", lambda t, group: ("nccl", t))
    ar = object.__new__(parallel.SymmAllReduce)
    ar.group, ar.group_name, ar.op, ar.dtype = "group", "0", "one_shot_all_reduce_copy", torch.float32
    ar.buf_dtype = torch.float32
    ar.buffers = [torch.zeros(parallel.SYMM_MAX_BYTES // 4) for _ in range(2)]
    x = torch.randn(1, 1, 64)
    for site in (0, 1):
        torch.testing.assert_close(ar(x, site), 2 * x)
        buf, name = calls[-1]
        assert name == "0" and buf.data_ptr() == ar.buffers[site].data_ptr() and buf.numel() == 64
    big = torch.randn(parallel.SYMM_MAX_BYTES // 4 + 1)
    assert ar(big, 0)[0] == "nccl" and ar(x.double(), 1)[0] == "nccl" and len(calls) == 2


def test_symm_allreduce_widens_fp16(monkeypatch):
    """torch's one-shot kernels take float32 and bfloat16 only: an fp16 model's SymmAllReduce holds float32
    buffers, widens the partial sum into one with the plain op and returns fp16 of the message's shape."""
    calls = []

    def one_shot(buf, op, group_name):
        assert buf.dtype == torch.float32
        calls.append(buf)
        return 2 * buf

    monkeypatch.setattr(torch.ops.symm_mem, "one_shot_all_reduce", one_shot, raising=False)
    monkeypatch.setattr(torch.ops.symm_mem, "one_shot_all_reduce_copy", None, raising=False)  # must not be used
    ar = object.__new__(parallel.SymmAllReduce)
    ar.group, ar.group_name, ar.op, ar.dtype = "group", "0", "one_shot_all_reduce_copy", torch.float16
    ar.buf_dtype = torch.float32
    ar.buffers = [torch.zeros(parallel.SYMM_MAX_BYTES // 4) for _ in range(2)]
    x = torch.randn(2, 1, 64).half()
    out = ar(x, 1)
    assert out.dtype == torch.float16 and out.shape == x.shape and len(calls) == 1
    assert calls[0].data_ptr() == ar.buffers[1].data_ptr()
    torch.testing.assert_close(out, 2 * x)


def test_symm_allreduce_with_ss_routes_the_fused_block(monkeypatch):
    """with_ss, the fused batch-1 block's all-reduce and sum-of-squares partials: out of a float32 buffer (an fp16
    model) one kernel rounds and takes the partials (kernels.row_narrow_ss, given the float32 sum); in the model's
    own dtype, or through NCCL, the partials of the sum (row_ss_partials). Kernels and op replaced by stand-ins."""
    kernels = pytest.importorskip("llama_fast.kernels", reason="triton is not installed: llama_fast.kernels needs it")
    calls = []
    monkeypatch.setattr(torch.ops.symm_mem, "one_shot_all_reduce", lambda buf, op, name: 2 * buf, raising=False)
    monkeypatch.setattr(parallel, "all_reduce_sum", lambda t, group: 3 * t)
    monkeypatch.setattr(kernels, "row_narrow_ss", lambda x, like: (calls.append(("narrow", x.dtype, x.shape)),
                                                                    (x.to(like.dtype), x.pow(2)))[1])
    monkeypatch.setattr(kernels, "row_ss_partials", lambda h: (calls.append(("ss", h.dtype, h.shape)), h.pow(2))[1])
    for dtype, buf_dtype in ((torch.float16, torch.float32), (torch.float32, torch.float32)):
        ar = object.__new__(parallel.SymmAllReduce)
        ar.group, ar.group_name, ar.op, ar.dtype, ar.buf_dtype = "group", "0", "one_shot_all_reduce", dtype, buf_dtype
        ar.buffers = [torch.zeros(parallel.SYMM_MAX_BYTES // 4) for _ in range(2)]
        ar.row_buffers, ar.row_handles = [], []  # not ALLREDUCE_FUSED
        x = torch.randn(1, 64).to(dtype)
        calls.clear()
        h, ss = ar.with_ss(x, 0)
        assert h.dtype == dtype and h.shape == x.shape
        torch.testing.assert_close(h, 2 * x)
        kind = "narrow" if dtype == torch.float16 else "ss"
        assert calls == [(kind, torch.float32, x.shape)], calls
        calls.clear()
        big = torch.randn(1, parallel.SYMM_MAX_BYTES // 2).to(dtype)  # over the buffer: NCCL, in t's dtype
        h, _ = ar.with_ss(big, 1)
        torch.testing.assert_close(h, 3 * big)
        assert calls == [("ss", dtype, big.shape)], calls


def test_fused_allreduce_takes_the_batch1_rows(monkeypatch):
    """ALLREDUCE_FUSED: with_ss hands a (1, K) row in the model dtype to kernels.allreduce with its site's handle
    (buffer array, rank, world) and the buffer's slot per rank (numel / world); a row over one slot goes through
    NCCL."""
    allreduce = pytest.importorskip("llama_fast.kernels.allreduce",
                                    reason="triton is not installed: llama_fast.kernels needs it")
    kernels = pytest.importorskip("llama_fast.kernels", reason="triton is not installed")
    calls = []
    monkeypatch.setattr(allreduce, "allreduce_ss", lambda x, bufs, rank, world, slot, pdl: (
        calls.append((bufs, rank, world, slot, pdl)), (2 * x, x.float().pow(2)))[1])
    monkeypatch.setattr(parallel, "all_reduce_sum", lambda t, group: 3 * t)
    monkeypatch.setattr(kernels, "row_ss_partials", lambda h: h.float().pow(2))
    numel = parallel.SYMM_MAX_BYTES // 2
    ar = object.__new__(parallel.SymmAllReduce)
    ar.group, ar.group_name, ar.op, ar.dtype, ar.buf_dtype = "group", "0", "one_shot_all_reduce", torch.float16, \
        torch.float32
    ar.buffers = [torch.zeros(parallel.SYMM_MAX_BYTES // 4) for _ in range(2)]
    ar.row_buffers = [torch.zeros(numel, dtype=torch.float16) for _ in range(2)]
    ar.row_handles = [types.SimpleNamespace(buffer_ptrs_dev=10 + s, rank=1, world_size=2) for s in range(2)]
    x = torch.randn(1, 64).half()
    h, _ = ar.with_ss(x, 1, 1)
    assert calls == [(11, 1, 2, numel // 2, 1)] and torch.equal(h, 2 * x)
    over = torch.randn(1, numel // 2 + 8).half()  # over a slot, inside the buffer: NCCL
    h, _ = ar.with_ss(over, 0)
    assert len(calls) == 1 and torch.equal(h, 3 * over)


# ------------------------------------------------------------------------------------------- torchrun
def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _run(tp: int, *args: str, head: str = "replicated") -> subprocess.CompletedProcess:
    """run_llama.py alone (tp 1) or under torchrun with 2 processes on CPU, the output head's layout given by
    LLAMA_FAST_TP_HEAD; killed after TIMEOUT_S (no hang)."""
    launch = [sys.executable]
    if tp != 1:
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run([*launch, str(ROOT / "run_llama.py"), "--device", "cpu", "--tp", str(tp), *args],
                          cwd=ROOT, env={**_env(), parallel.HEAD_ENV: head}, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _hash(tp: int, model: str, out: Path, *extra: str, head: str = "replicated") -> str:
    res = _run(tp, "--model", model, *RUN_FLAGS, *extra, "--output", str(out), head=head)
    assert res.returncode == 0, res.stderr[-3000:]
    (row,) = _rows(out)  # rank 0 alone writes the row
    assert row["tp"] == str(tp) and float(row["tok_per_s"]) > 0
    if "--quantize" in extra:
        assert row["quantize"] == quant.scheme_name(extra[extra.index("--quantize") + 1])
    assert res.stdout.count("rows appended to") == 1  # rank 0 alone prints the report
    return row["hash"]


@pytest.fixture(scope="module")
def tiny_tp1_hash(tmp_path_factory) -> str:
    return _hash(1, "random:tiny", tmp_path_factory.mktemp("tp1") / "rows.csv")


def test_tp2_hash_equals_tp1_random_tiny(tmp_path, tiny_tp1_hash):
    assert _hash(2, "random:tiny", tmp_path / "tp2.csv") == tiny_tp1_hash


def test_tp2_compiled_hash_equals_tp1(tmp_path, tiny_tp1_hash):
    # the all-reduces traced by torch.compile (functional collectives) inside each compiled block
    assert _hash(2, "random:tiny", tmp_path / "tp2.csv", "--compile", "static") == tiny_tp1_hash


def test_tp2_hash_equals_tp1_gqa_checkpoint(tmp_path):
    ckpt = tmp_path / "gqa"
    make_hf(TINY_CONFIGS["gqa"]).save_pretrained(ckpt)  # safetensors: each rank reads its slices
    assert _hash(2, str(ckpt), tmp_path / "tp2.csv") == _hash(1, str(ckpt), tmp_path / "tp1.csv")


# (model, --quantize or a quantized checkpoint, head): int8 and int4 over random:tiny and the GQA checkpoint, in
# both head layouts (the GQA vocabulary of 97 pads the vocabulary-parallel head's last rank), a quantized
# checkpoint directory among them; each tp 2 hash must equal the tp 1 hash of the same weights (the
# full-precision model quantized at load). random:tiny's int4 is refused (BAD_TP): no group fits its w2 shard.
TP_HASH_CASES = [("random:tiny", "int8", "vocab"), ("gqa", "int8", "replicated"), ("gqa", "int4:g32", "vocab"),
                 ("gqa-int4-dir", "int4:g32", "replicated")]


@pytest.fixture(scope="module")
def tp1_hashes(tmp_path_factory):
    """The tp 1 hash of (model, scheme), computed once."""
    hashes: dict[tuple[str, str | None], str] = {}

    def get(model: str, scheme: str | None) -> str:
        if (model, scheme) not in hashes:
            extra = () if scheme is None else ("--quantize", scheme)
            hashes[model, scheme] = _hash(1, model, tmp_path_factory.mktemp("tp1") / "rows.csv", *extra)
        return hashes[model, scheme]
    return get


@pytest.mark.parametrize("model,scheme,head", TP_HASH_CASES, ids=[f"{m}-{s}-{h}" for m, s, h in TP_HASH_CASES])
def test_tp2_hash_equals_tp1_quantized_and_head_layouts(tmp_path, gqa_checkpoints, tp1_hashes, model, scheme, head):
    source = str(gqa_checkpoints["full"]) if model.startswith("gqa") else model
    expected = tp1_hashes(source, scheme)
    if model.endswith("-dir"):  # a quantized checkpoint directory: its own scheme, no --quantize
        got = _hash(2, str(gqa_checkpoints[scheme]), tmp_path / "tp2.csv", head=head)
    else:
        got = _hash(2, source, tmp_path / "tp2.csv", *(() if scheme is None else ("--quantize", scheme)), head=head)
    assert got == expected


def test_tp2_compiled_vocab_head_hash_equals_tp1(tmp_path, tiny_tp1_hash):
    # the logits' all-gather traced by torch.compile (a functional collective) after the compiled blocks
    assert _hash(2, "random:tiny", tmp_path / "tp2.csv", "--compile", "static", head="vocab") == tiny_tp1_hash


BAD_TP = [(3, (), "llama-fast: error: --tp 3 does not divide the model's 4 attention heads"),
          (4, (), "llama-fast: error: --tp 4 needs 4 processes, torchrun started 2: "),
          (2, ("--quantize", "int4:g32"), "llama-fast: error: --tp 2 splits the w2 K = 352 into 176 per rank, not "
                                          "a multiple of its int4 group 32: no int4 group divides it: use int8, or "
                                          "another tp")]


@pytest.mark.parametrize("tp,extra,message", BAD_TP, ids=["indivisible", "world-mismatch", "int4-group-straddles"])
def test_bad_tp_stops_each_rank_with_one_line(tmp_path, tp, extra, message):
    """Each of two ranks, started as torchrun starts them (its environment), exits 2 with the same one line
    without waiting for the other."""
    out = tmp_path / "rows.csv"
    procs = []
    for rank in range(2):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29599"}
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "run_llama.py"), "--model", "random:tiny",
                                       "--device", "cpu", "--tp", str(tp), *RUN_FLAGS, *extra, "--output",
                                       str(out)],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        results = [(p.communicate(timeout=TIMEOUT_S), p.returncode) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for (stdout, stderr), code in results:
        assert code == 2 and stdout == ""
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), stderr[-2000:]
    assert not out.exists()


def test_bad_tp_under_torchrun_ends_without_a_hang(tmp_path):
    out = tmp_path / "rows.csv"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    res = subprocess.run([*launch, str(ROOT / "run_llama.py"), "--model", "random:tiny", "--device", "cpu",
                          "--tp", "3", *RUN_FLAGS, "--output", str(out)],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert res.returncode != 0
    # torchrun stops the other rank once one has failed: it may or may not have printed its line by then
    errors = [line for line in res.stderr.splitlines() if line.startswith("llama-fast: error:")]
    assert errors and set(errors) == {BAD_TP[0][2]}, res.stderr[-2000:]
    assert not out.exists()


def test_symm_allreduce_on_cpu_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(parallel.ALLREDUCE_ENV, "symm")
    with pytest.raises(SystemExit) as exc:
        main(["--model", "random:tiny", "--device", "cpu", "--tp", "2", *RUN_FLAGS, "--output",
              str(tmp_path / "rows.csv")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "llama-fast: error: --tp 2: LLAMA_FAST_TP_ALLREDUCE=symm needs CUDA GPUs: the one-shot all-reduce runs over "
        "symmetric GPU memory, which gloo on cpu does not have"]
    assert not (tmp_path / "rows.csv").exists()


def test_tp_outside_torchrun_is_one_line(tmp_path, capsys, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["--model", "random:tiny", "--device", "cpu", "--tp", "2", *RUN_FLAGS, "--output",
              str(tmp_path / "rows.csv")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["llama-fast: error: --tp 2 needs a process group of 2 processes: launch it with torchrun "
                   "--nproc-per-node N (N = --tp)"]
    assert not (tmp_path / "rows.csv").exists()


GENERATE_SCRIPT = """
import os
import sys
import torch
import torch.distributed as dist
from llama_fast import load_model
from llama_fast.api import output_hash

dist.init_process_group("gloo")  # load_model uses the group it finds
fast = load_model("random:tiny", "cpu", "fp32", tp=2)
ids = torch.randint(0, 512, (2, 5), generator=torch.Generator().manual_seed(0))
out = fast.generate(ids, max_new_tokens=6, min_new_tokens=6)
# one write per line: two ranks share the pipe, and print's text and newline are two writes
sys.stdout.write(f"rank {dist.get_rank()} kv_heads {fast.config.n_kv_heads} hash {output_hash(fast.tokenizer, out)}\\n")
sys.stdout.flush()
# as README says: torch's gloo teardown sometimes aborts a rank at exit ("terminate called without an active
# exception"; a plain torch script too, with or without destroy_process_group): once every rank is done,
# os._exit skips it
dist.barrier()
os._exit(0)
"""


def test_load_model_in_an_initialized_group(tmp_path):
    from llama_fast import load_model
    from llama_fast.api import output_hash

    fast = load_model("random:tiny", "cpu", "fp32")
    ids = torch.randint(0, 512, (2, 5), generator=torch.Generator().manual_seed(0))
    expected = output_hash(fast.tokenizer, fast.generate(ids, max_new_tokens=6, min_new_tokens=6))
    script = tmp_path / "generate.py"
    script.write_text(GENERATE_SCRIPT)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = sorted(line for line in res.stdout.splitlines() if line.startswith("rank "))
    assert lines == [f"rank {r} kv_heads 1 hash {expected}" for r in range(2)]


def test_ranks_meet_before_a_gloo_group_is_torn_down(monkeypatch):
    """After a run that ended well, a gloo group init_from_env made meets in one barrier bounded by EXIT_BARRIER_S;
    a peer that does not come ends the wait (no error); a group made elsewhere, or none, is left alone."""
    from datetime import timedelta

    calls = []

    def barrier(timeout, wait_all_ranks):
        calls.append((timeout, wait_all_ranks))
        if len(calls) == 2:
            raise RuntimeError("rank 1 failed to pass monitoredBarrier")

    monkeypatch.setattr(parallel.dist, "monitored_barrier", barrier)
    monkeypatch.setattr(parallel.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(parallel.dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(parallel, "_MADE_HERE", False)
    parallel.meet_before_exit()
    assert calls == []
    monkeypatch.setattr(parallel, "_MADE_HERE", True)
    parallel.meet_before_exit()
    parallel.meet_before_exit()  # the peer gone: returns
    assert calls == [(timedelta(seconds=parallel.EXIT_BARRIER_S), True)] * 2
    monkeypatch.setattr(parallel.dist, "get_backend", lambda: "nccl")
    parallel.meet_before_exit()
    assert len(calls) == 2
