"""Launch configurations of the decode kernels: the autotune search space, the table of measured configs per
GPU, and the override hook that scripts/perf_lab.py --config-trials uses.

Forms (the names pinned_config and CONFIG_OVERRIDE take): gemv, rmsnorm, residual, swiglu (the fused GEMV's
forms, n = output rows, K = input width), qkv_rope (n = wqkv rows), attention (n = cache slots, K = head dim;
a config of CHUNK slots per program and num_warps). The GEMV forms of quantized weights carry the format:
rmsnorm_int8, swiglu_int4, qkv_rope_int4, ... (kernels/dequant.py), and at 2 rows (the rows GEMV,
kernels/gemv_rows.py) rows_<form>: rows_swiglu_int4, ... (rows_config). The small-M GEMM (kernels/gemm.py, batch
2-64) has forms gemm<BLOCK_M>_<plain | rmsnorm | swiglu>[_int8 | _int4] (n = output columns, K = input width);
its H200 configs are gemm.py's tables, and unlike the GEMVs it takes its config inside torch.compile too
(launch_config): the compiled block is traced, so a GPU that needs tuning tunes it eagerly before the first
trace (model.Transformer.tune_small_m_gemm).

Eager launches (the fastest path's decode block runs uncompiled inside the step's CUDA graph) take one config
per form instead of Triton's autotuner: the autotuner compiles its 12 configs per shape one after another on
the first call (about 30 s of a 62 s cold warm-up), and its picks moved between processes. Which config:
CONFIG_TABLE, keyed by the GPU (gpu_key: name, compute capability, SM count), holds the configs measured on
that GPU; the H200's are the autotuner's picks at the Llama-7B decode shapes in a warm H200 process, then the
config trials of docs/PERF.md, and for the fused block's GEMVs they hold at the shapes measured (H200_GEMV_SHAPES).
On a GPU the table does not hold, at a shape its entry does not reach, or with LLAMA_FAST_CONFIG_TABLE=0, the first
eager launch of each (form, n, K) times a few candidates and caches the fastest on disk (kernels/tuning.py).
Off a GPU (Triton's interpreter) the H200's configs apply. Inside torch.compile, Inductor compiles the
configs in parallel and keeps the search; LLAMA_FAST_GEMV_AUTOTUNE=1 keeps it for eager launches too.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import torch
import triton

from .pdl import interpreting


def autotune_configs() -> list[triton.Config]:
    """The GEMVs' search space (12 configs) keeps a cold autotune to a few seconds per shape. num_stages does
    not pipeline these loads: Triton (3.6 and 3.9, sm_90) emits no cp.async for loads that feed no dot, and
    loading the weight tiles one or two K iterations ahead by hand was slower in the step (docs/PERF.md)."""
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=4, num_stages=stages)
            for bn in (8, 16, 32) for bk in (256, 512) for stages in (2, 3)]


def gemv_config(form: str, n: int) -> dict:
    """The pinned config of an eager fused GEMV of a form with n output rows (BLOCK_N a multiple of the
    sum-of-squares group). The residual GEMVs (wo, w2) take 1024-wide K tiles at 8 warps: decode 3.749 against
    3.812 ms/step in one H200 process (at 4 warps that tile was 14 % slower). Quantized forms: QUANT_CONFIGS."""
    fmt = form.rpartition("_")[2]
    if fmt in ("int8", "int4"):
        return QUANT_CONFIGS.get(form) or QUANT_CONFIGS[fmt]
    if form == "residual":
        return {"BLOCK_N": 8, "BLOCK_K": 1024, "num_warps": 8, "num_stages": 3}
    return {"BLOCK_N": 16 if n >= 16384 else 8, "BLOCK_K": 512, "num_warps": 4,
            "num_stages": 2 if form == "swiglu" else 3}  # SwiGLU streams two tiles per stage


# the wqkv GEMV with RoPE and the cache write; every BLOCK_N of the search space (8..32) divides the head dim
QKV_ROPE_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 256, "num_warps": 4, "num_stages": 3}

# Quantized weights (kernels/dequant.py). A K tile spans exactly the threads of a program, 16 bytes (one load)
# per thread and row, so every row of the tile sits in each thread and x is loaded, normalized and summed once
# per program instead of once per row: 2048 int8 / 4096 int4 weights per row at 4 warps, 2 KB, the bytes of
# the residual GEMVs' tile above. With 8 rows the int4 loop compiled (sm_90, before dequant.py's subnormal form)
# to 4.0 instructions per weight, 4.4 with the RMSNorm prologue, in 128-168 registers; 16 rows would take 3.6-3.8
# but all 255 registers. The two-tile forms (SwiGLU: gate and up; qkv_rope: both halves of a head) hold twice
# the rows: int8 takes 8 warps there (255 registers at 4). Chosen from compiled code; scripts/fused_bench.py
# --weights fp16,int8,int4 --sweep-configs times them against its QUANT_GRID, which moved the int8 SwiGLU form
# (docs/PERF.md).
QUANT_CONFIGS = {
    "int8": {"BLOCK_N": 8, "BLOCK_K": 2048, "num_warps": 4, "num_stages": 3},
    # measured (fused_bench --sweep-configs, H200): 28.4 us at Llama-7B's w13 against 33.1 at 2048 / 8 warps
    "swiglu_int8": {"BLOCK_N": 8, "BLOCK_K": 1024, "num_warps": 4, "num_stages": 2},
    # wqkv: 16 rows over 4 warps (168 registers, 3 an SM; 3.7 instructions a weight, compiled offline), the step
    # 2.367 against 2.451 / 2.464 ms at 8 warps (perf_lab.py trial set 23, H200)
    "qkv_rope_int8": {"BLOCK_N": 16, "BLOCK_K": 2048, "num_warps": 4, "num_stages": 3},
    "int4": {"BLOCK_N": 8, "BLOCK_K": 4096, "num_warps": 4, "num_stages": 3},
    # wo and w2: 16 rows over 8 warps, each half of the threads the 4-warp tile of 8 rows (3.76 instructions a
    # weight, 128 registers, against 4.09 and 133; compiled offline): the decode step 2.027 against 2.074 / 2.076
    # ms pinned at 8 rows over 4 warps (perf_lab.py trial set 12, H200); 16 rows over 4 warps (255 registers) 2.239
    "residual_int4": {"BLOCK_N": 16, "BLOCK_K": 4096, "num_warps": 8, "num_stages": 3},
    # w13: persistent programs, 2 an SM, each walking the row blocks with the next block's tile loaded before this
    # one's products and x prepared once (gemv.py, PERSIST): at 4 warps (255 registers) 19.8 against 22.7 us
    # alone, the decode step 2.003 against 2.024 / 2.028 ms pinned at one program per block (perf_lab.py trial
    # set 13, H200); at 8 warps (128 registers, twice the warps an SM) 16.6 against 19.9 us alone, the step 1.879
    # against 1.932 / 1.933 ms (trial set 18); at 4 rows over 4 warps, 4 an SM (118 registers, 16 warps an SM),
    # 1.745 against 1.804 / 1.789 ms (trial set 22). (SwiGLU writes no sum-of-squares partials: 4 rows is fine.)
    "swiglu_int4": {"BLOCK_N": 4, "BLOCK_K": 4096, "num_warps": 4, "num_stages": 3, "PERSIST": 4},
    # wqkv as persistent programs too: 16 rows at 2 an SM (255 registers) the step 1.990 against 2.023 / 2.021 ms
    # (trial set 15); since the subnormal form (dequant.py), 8 rows at 4 an SM (127 registers, 16 warps an SM)
    # 1.793 against 1.869 / 1.874 (trial set 21)
    "qkv_rope_int4": {"BLOCK_N": 8, "BLOCK_K": 4096, "num_warps": 4, "num_stages": 3, "PERSIST": 4},
    # the head: persistent, 4 an SM (127 registers): 22.8 against 30.0 us alone (fused_bench --persist), the step
    # 1.858 against 1.869 / 1.874 ms (trial set 21; it runs once a step)
    "rmsnorm_int4": {"BLOCK_N": 8, "BLOCK_K": 4096, "num_warps": 4, "num_stages": 3, "PERSIST": 4},
}

# Decode attention. Inside torch.compile: 64-slot tiles (one tile per program, K and V loads issued together)
# at 2 warps, 7.9 us against 9.7 with 4 (scripts/fused_bench.py, H200); one config, no search. Eager launches:
# 128-slot tiles at 4 warps, half the programs of 64/2: decode 3.851 against 3.894-3.902 ms/step in one H200
# process.
ATTN_CHUNK = 64
ATTN_COMPILED_WARPS = 2
ATTN_EAGER_CONFIG = {"CHUNK": 128, "num_warps": 4}
# The two-kernel form of a GQA model on the tensor cores (attention._decode_attn_split_gqa_kernel: a program per KV
# head, its query heads the rows of one product, each K / V tile read once). H200, Llama-3-8B: at batch 8 19.4
# against 29.8 us at the compiled 64 / 2 (scripts/attn_bench.py --form split --shape llama3-8b), the bf16 step
# 1296.6-1302.3 against 1187.1-1192.3 tok/s, batch 2 395.7 against 389.0 (docs/PERF.md). The "attention"
# config's GQA_DOT key overrides it for one launch.
ATTN_GQA_DOT = True
# That form's eager launch at batches above 1 (the kernels-only step, model.Transformer.small_m_kernels_apply):
# 128-slot tiles at 4 warps. Llama-3-8B bf16 batch 8 (H200): the step 4.793 against 4.864 / 4.854 ms at the
# compiled 64 / 2 (scripts/perf_lab.py trial set 34; 64 / 4 4.834, 32 / 2 4.873), alone 18.1 against 19.4 us.
ATTN_GQA_EAGER_CONFIG = {"CHUNK": 128, "num_warps": 4}
# ... where the batch's programs are many, its span form (attention.span_config): a program an online softmax over
# a span of 64-slot tiles loaded two stages deep, about 4 programs an SM, so the combine reads fewer partials.
# Llama-3-8B bf16 (H200): the step 4.600 against 4.641 / 4.645 ms at batch 8, 4.913 against 5.026 / 5.006 at 16
# (scripts/perf_lab.py trial set 40 as it was at d4351ef; docs/PERF.md, "Llama-3-8B's GQA attention in spans").
# Where its spans are short it is no faster: alone at batch 2 (one tile a span) 10.0 against 8.7 us; at batch 4
# (two tiles) 11.7 against 11.6 us, the step 4.414 / 4.403 against 4.393 ms (set 40 at 421971f). So
# batched_eager_config keeps the one-chunk launch where a span would hold fewer than three tiles.
ATTN_GQA_SPAN_CONFIG = {"CHUNK": 64, "num_warps": 4, "WAVES": 4, "STAGES": 2}
ATTN_SPAN_MIN_TILES = 3
# A PDL launch of the attention holds its K and V tiles across the wait and loads the newest row again after
# it: at 128 slots and 4 warps Triton 3.6's ptxas (CUDA 12.8) gives it 211 registers per thread, 2 programs per
# SM, so the seed's 320 programs (32 heads x 10 chunks) take two waves on an H200's 132 SMs. CUDA 13.0's ptxas
# stops at 168 on its own (3 per SM, one wave): the 34.6 against 37.8 us launches of docs/PERF.md ("The kernel
# package's attention registers"). The cap gives that count whichever ptxas Triton runs (12.8 and 13.0 then emit
# the same SASS, no spill; Triton 3.9's 13.4: 184 -> 168, 16 B spilled); timed on an H200 it gives the old speed.
# PDL-off launches take 167 and stay uncapped (scripts/sass_probe.py prints the counts).
ATTN_PDL_MAXNREG = 168


def h200_config(form: str, n: int, K: int) -> dict:
    """The configs measured on the H200, the pins above (its table entry, h200_table, where they were measured;
    also the fallback of an untuned shape inside a CUDA-graph capture, and the configs off a GPU)."""
    if form.startswith(ROWS_PREFIX):  # the rows GEMV: the one-row pin with its changes
        one = form.removeprefix(ROWS_PREFIX)
        return {**h200_config(one, n, K), **H200_ROWS_CHANGES.get(one, {})}
    if form == "qkv_rope":
        return QKV_ROPE_CONFIG
    if form == "attention":
        return ATTN_EAGER_CONFIG
    if form.startswith("gemm"):
        from .gemm import h200_gemm_config  # gemm.py imports this module

        return h200_gemm_config(form)
    return gemv_config(form, n)


# The fused block's GEMV forms: their pins hold at the shapes they were measured at (H200_GEMV_SHAPES)
SHAPED_FORMS = ("rmsnorm", "residual", "swiglu", "qkv_rope")
# The fp16 / bf16 shapes (form, n, K) of those forms the H200's pins were measured at: the tp 1 decode of Llama-7B
# and Llama-3-8B, the wqkv GEMV's form with its query and KV heads (heads_form): its (n, K) alone do not tell
# Llama-3-8B's 32 / 8 heads from a Llama-7B rank's 16 / 16 at tp 2. On an H200 such a GEMV of another shape (a
# tensor-parallel rank's shard, another model) takes the tuned path, whose first candidate is the pin: at the
# half shapes of Llama-7B at tp 2 the step ran 401.5 tok/s tuned against 377.5 / 377.8 with the pins (two H200s,
# docs/PERF.md).
H200_GEMV_SHAPES = frozenset({
    ("qkv_rope:32/32", 12288, 4096), ("swiglu", 11008, 4096), ("residual", 4096, 4096), ("residual", 4096, 11008),
    ("rmsnorm", 32000, 4096),  # Llama-7B
    ("qkv_rope:32/8", 6144, 4096), ("swiglu", 14336, 4096), ("residual", 4096, 14336), ("rmsnorm", 128256, 4096),
})
# The (query heads, KV heads) the H200's attention pin was measured at (Llama-7B, Llama-3-8B; tp 1). A launch
# with other heads is tuned: a Llama-7B rank at tp 2 has 16 / 16, half the programs per cache chunk (the tp 2
# step 395.5 / 397.0 tok/s with its attention tuned against 393.3 / 392.4 pinned, docs/PERF.md).
H200_ATTENTION_HEADS = frozenset({(32, 32), (32, 8)})


def h200_table(form: str, n: int, K: int) -> dict | None:
    """The H200's table entry: its pins, except for a fused-block GEMV at a shape they were not measured at or
    an attention at other heads (None: the tuned path). form may carry the launch's heads (heads_form)."""
    base, heads = split_form(form)
    if base == "attention" and heads is not None and heads not in H200_ATTENTION_HEADS:
        return None
    if base in SHAPED_FORMS and (form, n, K) not in H200_GEMV_SHAPES:
        return None
    return h200_config(base, n, K)


# The rows GEMV (kernels/gemv_rows.py: a quantized projection of 2 rows through the fused GEMVs) has forms of its
# own, "rows_<form>" (rows_config). On the H200 they are the one-row form's pin with these changes: each program
# holds every row's accumulators and x tile, so the persistent int4 wqkv and w13 run 2 programs an SM, not 4 (at
# 2 rows they compile to 233 and 168 registers: 2 and 3 fit an SM, scripts/sass_probe.py --gemv-rows 2), and the
# int8 residual GEMVs (wo, w2) half the K tile. Measured at batch 2 (scripts/perf_lab.py trial sets 31 and
# 32, docs/PERF.md): int4 3.011 / 3.012 against 3.083 / 3.095 ms/step pinned (w13 / wqkv alone), int8 3.616
# against 3.992 / 3.987. Another GPU tunes them at 2 rows (kernels/tuning.py).
ROWS_PREFIX = "rows_"
H200_ROWS_CHANGES = {
    "swiglu_int4": {"PERSIST": 2},
    "qkv_rope_int4": {"PERSIST": 2},
    "residual_int8": {"BLOCK_K": 1024},
}

H200 = "NVIDIA H200|sm90|132"
# gpu_key -> (form, n, K) -> config, or None where this GPU's measured configs do not reach (that shape is
# tuned; form may carry the launch's heads, split_form): the GPUs whose configs were measured. Another GPU's
# entry can be built from its tuning cache file (kernels/tuning.py: "configs" maps "form|n|K" to the choice).
CONFIG_TABLE: dict[str, Callable[[str, int, int], dict | None]] = {H200: h200_table}

# (form, n, K) -> a config dict, or None for the table's (scripts/perf_lab.py --config-trials sets it)
CONFIG_OVERRIDE: Callable[[str, int, int], dict | None] | None = None


def gpu_key(name: str, capability: tuple[int, int], sm_count: int) -> str:
    """The table's and the tuning cache's key of a GPU: 'NVIDIA H200|sm90|132'."""
    return f"{name}|sm{capability[0]}{capability[1]}|{sm_count}"


@functools.lru_cache(maxsize=None)
def _device_key(index: int) -> str:
    props = torch.cuda.get_device_properties(index)
    return gpu_key(props.name, (props.major, props.minor), props.multi_processor_count)


def current_gpu_key() -> str | None:
    """The current CUDA device's gpu_key, or None off a GPU and under Triton's CPU interpreter."""
    if interpreting() or not torch.cuda.is_available():
        return None
    return _device_key(torch.cuda.current_device())


def table_enabled() -> bool:
    """LLAMA_FAST_CONFIG_TABLE=0 hides CONFIG_TABLE: every GPU takes the unmeasured GPU's path (autotune and
    cache), so a measured GPU can show what an unmeasured one gets."""
    return os.environ.get("LLAMA_FAST_CONFIG_TABLE", "1") != "0"


def heads_form(form: str, heads: int, kv_heads: int) -> str:
    """form with a launch's query and KV heads ("qkv_rope:32/8"), where (n, K) do not fix what the launch runs:
    the tuning cache keys and times the launch by it, and the H200's table tells its measured shapes by it."""
    return f"{form}:{heads}/{kv_heads}"


def split_form(form: str) -> tuple[str, tuple[int, int] | None]:
    """(the launch's form, its (heads, KV heads) or None) of a form that may carry them (heads_form):
    "attention:32/8" -> ("attention", (32, 8)); "swiglu" -> ("swiglu", None)."""
    base, sep, heads = form.partition(":")
    if not sep:
        return form, None
    h, _, hkv = heads.partition("/")
    return base, (int(h), int(hkv))


def attention_form(heads: int, kv_heads: int) -> str:
    """The tuning cache's form of a decode attention launch with these query and KV heads ("attention:32/8"):
    (cache slots, head dim) alone do not fix the kernel's programs nor, for a grouped-query model, its kernel."""
    return heads_form("attention", heads, kv_heads)


def overridden(form: str, n: int, K: int) -> dict | None:
    """CONFIG_OVERRIDE's config of a launch (a trial of scripts/perf_lab.py, attn_bench.py, ...), or None."""
    return CONFIG_OVERRIDE(form, n, K) if CONFIG_OVERRIDE is not None else None


def pinned_config(form: str, n: int, K: int, tuned_as: str | None = None) -> dict | None:
    """The config an eager launch of form takes (CONFIG_OVERRIDE's, else the table's for this GPU, else the
    tuned one), or None where the kernel's own search applies: inside torch.compile, or with
    LLAMA_FAST_GEMV_AUTOTUNE=1. tuned_as: the form the table and the tuning cache know this launch as, where
    (n, K) do not fix what the launch runs (heads_form); CONFIG_OVERRIDE gets form."""
    if torch.compiler.is_compiling() or os.environ.get("LLAMA_FAST_GEMV_AUTOTUNE", "0") == "1":
        return None
    override = overridden(form, n, K)
    if override:
        return override
    return _table_or_tuned(form, n, K, tuned_as)


def _table_or_tuned(form: str, n: int, K: int, tuned_as: str | None = None) -> dict:
    key = current_gpu_key()
    if key is None:
        return h200_config(form, n, K)
    if table_enabled() and key in CONFIG_TABLE:
        measured = CONFIG_TABLE[key](tuned_as or form, n, K)
        if measured is not None:
            return measured
    from . import tuning  # the unmeasured GPU's path only

    return tuning.tuned_config(key, tuned_as or form, n, K)


def launch_config(form: str, n: int, K: int) -> dict:
    """The config of a kernel without a search of its own (the small-M GEMM), inside torch.compile or not:
    CONFIG_OVERRIDE's, else this GPU's table entry, else its tuned choice (inside a trace or a capture the cached
    one, else the H200's: kernels/tuning.py)."""
    override = overridden(form, n, K)
    return override or _table_or_tuned(form, n, K)


def tuning_needed() -> bool:
    """Whether this process's GPU takes tuned configs for every form (not in the table, or the table hidden);
    on a GPU in the table only the fused block's GEMVs at unmeasured shapes are tuned, on their first eager
    launch."""
    key = current_gpu_key()
    return key is not None and not (table_enabled() and key in CONFIG_TABLE)


def rows_config(form: str, n: int, K: int, rows: int, tuned_as: str | None = None) -> dict | None:
    """The config of a fused GEMV launch of form at `rows` rows: pinned_config's, past one row (the rows GEMV,
    kernels/gemv_rows.py) that of its form "rows_<form>": CONFIG_OVERRIDE's (scripts/perf_lab.py
    --config-trials), else the H200's (the one-row pin with H200_ROWS_CHANGES; also off a GPU), else this GPU's
    choice tuned at 2 rows."""
    if rows == 1:
        return pinned_config(form, n, K, tuned_as)
    return pinned_config(ROWS_PREFIX + form, n, K, ROWS_PREFIX + tuned_as if tuned_as else None)
