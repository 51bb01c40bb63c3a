"""Kernel configs on a GPU that configs.CONFIG_TABLE does not hold: a short autotune per (form, n, K), cached on
disk.

The first eager launch of a (form, n, K) on such a GPU times each of a few candidate configs (candidates: the
H200's config first, then its neighbours) with CUDA events, on inputs of the launch's shape, shows a progress
line, and keeps the fastest. The choices go to a JSON file under $LLAMA_FAST_CACHE (default ~/.cache/llama_fast)
named by the GPU key, the Triton version and SCHEMA, so later processes on that GPU load them instead of timing
again. A file that cannot be read or parsed is ignored with one warning and rewritten with the next choice.

Timing runs only outside a CUDA-graph capture and outside tracing: the fastest path's first step runs
uncaptured (compile.py warms every graph up on real inputs before capturing it), so the tuning happens there, in
the warm-up (the harness times only after its warm-up runs), never in a timed run or a graph. A launch without
a cached choice inside a capture takes the H200's config (valid on every GPU the kernels run on) and warns once
per form.

The timing function is injected (MAKE_TIMER: (form, n, K) -> config -> seconds), so the selection and the
cache are tested on the CPU with a fake timer; kernel_timer builds the real one.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import triton
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources, PTXASError

from . import configs

SCHEMA = 3  # bump when the forms, the candidates' meaning or the file layout change: old files are then not read
CALLS, REPS = 20, 5  # launches per timed run (one CUDA graph), timed runs per candidate (the fastest counts)
L2_ROTATE = 2  # inputs rotated over at least this many times the L2 cache, so no call reads its weights from L2


class TuningWarning(UserWarning):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("LLAMA_FAST_CACHE") or Path.home() / ".cache" / "llama_fast")


def cache_path(gpu: str) -> Path:
    """The cache file of a GPU key under this Triton version and SCHEMA."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    return cache_dir() / f"kernel-configs-{slug}-triton{triton.__version__}-v{SCHEMA}.json"


def entry_key(form: str, n: int, K: int) -> str:
    return f"{form}|{n}|{K}"


class ConfigCache:
    """The tuned configs of one GPU: {"form|n|K": config}, read from its file on first use."""

    def __init__(self, gpu: str):
        self.gpu, self.path = gpu, cache_path(gpu)
        self.configs = self._read()

    def _read(self, quiet: bool = False) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            if data.get("schema") != SCHEMA or data.get("gpu") != self.gpu:
                raise ValueError(f"written for {data.get('gpu')!r}, schema {data.get('schema')!r}")
            found = data["configs"]
            if not all(isinstance(c, dict) and all(isinstance(v, int) for v in c.values()) for c in found.values()):
                raise ValueError("a config is not a dict of ints")
            return dict(found)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            if quiet:
                return {}
            warnings.warn(f"llama_fast: ignoring the kernel config cache {self.path} ({e}); it will be rewritten",
                          TuningWarning, stacklevel=2)
            return {}

    def get(self, form: str, n: int, K: int) -> dict | None:
        return self.configs.get(entry_key(form, n, K))

    def put(self, form: str, n: int, K: int, config: dict):
        """Keep a choice and write the file (whole, replacing the old one: a reader never sees half of it), with
        the choices other processes wrote meanwhile (benchmark shards on several GPUs of one kind share it)."""
        self.configs[entry_key(form, n, K)] = dict(config)
        self.configs = {**self._read(quiet=True), **self.configs}
        data = {"schema": SCHEMA, "gpu": self.gpu, "triton": triton.__version__, "configs": self.configs}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


_caches: dict[Path, ConfigCache] = {}  # this process's caches, one per file
_warned: set[str] = set()


def load(gpu: str) -> ConfigCache:
    path = cache_path(gpu)
    if path not in _caches:
        _caches[path] = ConfigCache(gpu)
    return _caches[path]


def candidates(form: str, n: int, K: int) -> list[dict]:
    """The configs an autotune of form times: the H200's first (ties keep it), then a few around it. GEMV tiles
    keep BLOCK_N a multiple of the sum-of-squares group (8; the H200's int4 SwiGLU takes 4, as it writes no
    partials) and at most 32 (the qkv+RoPE kernel's BLOCK_N must divide the head dim, model.ROPE_MIN_HEAD_DIM);
    quantized tiles keep 8 or 16 bytes per thread and row."""
    form = base_form(form)[0]
    base = configs.h200_config(form, n, K)
    plain = form.removeprefix(configs.ROWS_PREFIX)  # a rows GEMV form: the tiles of its one-row form
    if form == "attention":
        found = [{"CHUNK": c, "num_warps": w} for c, w in ((64, 2), (64, 4), (128, 8), (256, 4), (256, 8))]
    elif form.startswith("gemm"):
        found = gemm_candidates(form)
    else:
        kind, _, fmt = plain.rpartition("_")
        kind = kind if fmt in ("int8", "int4") else plain
        stages = 2 if kind == "swiglu" else 3  # SwiGLU streams two tiles per stage
        if fmt in ("int8", "int4"):  # 16 or 8 bytes a thread and row
            per_thread = 16 * (1 if fmt == "int8" else 2)  # weights in 16 bytes
            tiles = [(bn, per_thread * 32 * w // d, w) for bn in (8, 16) for w in (4, 8) for d in (1, 2)]
        else:
            tiles = [(8, 256, 4), (8, 512, 4), (16, 512, 4), (8, 1024, 8), (16, 1024, 8), (32, 256, 4)]
        found = [{"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": w, "num_stages": stages} for bn, bk, w in tiles]
    out = [dict(base)]
    return out + [c for i, c in enumerate(found) if c not in out and c not in found[:i]]


def gemm_candidates(form: str) -> list[dict]:
    """The small-M GEMM's candidates beside the H200's: the tiles its sweep put near the top on the H200
    (scripts/gemv_bench.py --gemm-sweep, docs/PERF.md), a K split aiming at 1-8 programs per SM (PER_SM), and
    stages that fit an sm_86 card's ~100 KB of shared memory (a candidate that does not fit is left out by
    choose). K tiles stay powers of two of 64-256, so an int4 tile never straddles a group boundary."""
    from .dequant import WFMT_DENSE
    from .gemm import parse_form

    _, swiglu, wfmt, _ = parse_form(form)
    if wfmt == WFMT_DENSE:
        tiles = [(32, 256, 4, 3, 1), (64, 128, 4, 3, 2), (64, 64, 4, 4, 1), (128, 128, 8, 3, 1), (64, 128, 4, 3, 4)]
    else:
        # the deep 64-wide K tiles: int8's 16-row pin on the H200, where the wgmma of a register operand is waited
        # for in its own K iteration and only the stages ahead overlap it
        tiles = [(64, 128, 4, 3, 8), (64, 128, 4, 3, 4), (128, 128, 8, 3, 1), (64, 64, 4, 4, 1), (32, 128, 4, 3, 8),
                 (64, 64, 4, 6, 8)]
    if swiglu:  # two weight tiles a stage: fewer stages
        tiles = [(bn, bk, w, min(s, 3), p) for bn, bk, w, s, p in tiles]
    return [{"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": w, "num_stages": s, "PER_SM": p}
            for bn, bk, w, s, p in tiles]


def choose(cands: list[dict], time_fn: Callable[[dict], float], desc: str) -> dict:
    """The candidate with the least time (the first of equals), timing each once under a progress line. A
    candidate this GPU cannot build or launch (too many registers or too much shared memory for it, a ptxas
    error) is left out with one warning; none at all is an error."""
    from ..progress import bar

    best, best_t, failed = None, float("inf"), []
    with bar(len(cands), desc, unit="configs") as b:
        for c in cands:
            try:
                t = time_fn(c)
            except (OutOfResources, PTXASError, CompilationError) as e:
                failed.append(f"{c}: {type(e).__name__}")
                t = float("inf")
            if t < best_t:
                best, best_t = c, t
            b.update()
    if best is None:
        raise RuntimeError(f"{desc}: no candidate config runs on this GPU ({'; '.join(failed)})")
    if failed:
        warnings.warn(f"llama_fast: {desc}: left out {len(failed)} config(s) this GPU cannot run: "
                      + "; ".join(failed), TuningWarning, stacklevel=2)
    return best


def capturing() -> bool:
    """Whether the current stream is capturing a CUDA graph (no timing there: the launches would be recorded)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def tracing() -> bool:
    """Whether a trace is running (torch.compile's AOTAutograd traces a triton_op's body with fake tensors, and
    torch.compiler.is_compiling() is False there): a fresh tensor is then not a plain torch.Tensor."""
    return type(torch.empty(0)) is not torch.Tensor


# (the launch's form, its (heads, KV heads) or None) of a tuning form: "attention:32/8" -> ("attention", (32, 8))
base_form = configs.split_form


def tuned_config(gpu: str, form: str, n: int, K: int) -> dict:
    """The config of form at (n, K) on a GPU the table does not hold: cached, else autotuned now and cached.
    Where nothing can be timed, the H200's: inside a capture with one warning per form; inside a trace
    silently (the traced kernels took the H200's configs before there was a table, and an eager run of the
    same shape fills the cache for the next process). form may carry the launch's heads (base_form)."""
    cache = load(gpu)
    hit = cache.get(form, n, K)
    if hit is not None:
        return hit
    if capturing():
        if form not in _warned:
            _warned.add(form)
            warnings.warn(f"llama_fast: no tuned {form} config for {gpu} at n={n}, K={K} inside a CUDA-graph "
                          f"capture: the H200's config is used (an eager launch of this shape tunes it)",
                          TuningWarning, stacklevel=3)
        return configs.h200_config(base_form(form)[0], n, K)
    if tracing():
        return configs.h200_config(base_form(form)[0], n, K)
    best = choose(candidates(form, n, K), MAKE_TIMER(form, n, K),
                  f"llama_fast: tuning the {form} kernel (n={n}, K={K}) for {gpu.split('|')[0]}")
    cache.put(form, n, K, best)
    from ..compile import tag_compile_caches

    tag_compile_caches()  # the blocks traced from now on take this choice: their compile-cache key says so
    return best


# ------------------------------------------------------------------------------------------- timing
@contextmanager
def forced(form: str, n: int, K: int, config: dict):
    """Launches of form at (n, K) take config (through configs.CONFIG_OVERRIDE; others ask the hook it held)."""
    prev = configs.CONFIG_OVERRIDE

    def override(f, nn, kk):
        if (f, nn, kk) == (form, n, K):
            return config
        return prev(f, nn, kk) if prev is not None else None

    configs.CONFIG_OVERRIDE = override
    try:
        yield
    finally:
        configs.CONFIG_OVERRIDE = prev


def _weight(fmt: str, rows: int, K: int, device, dt) -> tuple[torch.Tensor, dict]:
    """A random weight of `rows` x K in a format, and the op's quantization arguments (int4: group 128, or the
    largest kernel group dividing K)."""
    from .dequant import QUANT_GROUPS

    if fmt == "int8":
        return (torch.randint(-127, 128, (rows, K), dtype=torch.int8, device=device),
                {"scales": torch.rand(rows, device=device, dtype=dt) * 0.01})
    if fmt == "int4":
        group = max((g for g in QUANT_GROUPS if K % g == 0), default=QUANT_GROUPS[0])
        shape = (rows, K // group)
        return (torch.randint(0, 256, (rows, K // 2), dtype=torch.uint8, device=device),
                {"scales": torch.rand(shape, device=device, dtype=dt) * 0.01,
                 "offsets": -torch.rand(shape, device=device, dtype=dt) * 0.08, "group": group})
    return torch.randn(rows, K, device=device, dtype=dt) * 0.02, {}


def launcher(form: str, n: int, K: int, device, dt=torch.float16, copies: int = 1) -> Callable[[], object]:
    """A call launching the op of form once at (n, K), each call on the next of `copies` input sets. Shapes the
    key does not fix: batch 1; the attention's and the qkv+RoPE GEMV's heads from the form ("attention:H/Hkv";
    a plain "attention": 32 and 32, Llama-7B's; a plain "qkv_rope": a head dim of 128, else 64, 32, its rows
    split evenly over q, k and v heads where they divide)."""
    from .attention import decode_attention
    from .gemv import gemv, gemv_residual_ss, gemv_rmsnorm, gemv_rmsnorm_swiglu, ss_partials
    from .pdl import PDL_OFF
    from .qkv_rope import gemv_rmsnorm_qkv_rope

    if form.startswith("gemm"):
        return _gemm_launcher(form, n, K, device, dt, copies)
    if form.startswith(configs.ROWS_PREFIX):
        return _rows_launcher(form, n, K, device, dt, copies)
    form, heads = base_form(form)
    kind, _, fmt = form.rpartition("_")
    if fmt not in ("int8", "int4"):
        kind, fmt = form, ""
    eps = 1e-5
    x = torch.randn(1, K, device=device, dtype=dt)
    g = torch.ones(K, device=device, dtype=dt)
    ss = ss_partials(x)
    if kind == "attention":
        H, Hkv = heads or (32, 32)
        kv = [torch.randn(1, Hkv, n, K, device=device, dtype=dt) for _ in range(2 * copies)]
        q = torch.randn(1, H, 1, K, device=device, dtype=dt)
        mask = torch.ones(1, n, dtype=torch.bool, device=device)
        sets = [((q, kv[2 * i], kv[2 * i + 1], mask, K ** -0.5), {}) for i in range(copies)]
        op = decode_attention
    elif kind == "qkv_rope":
        H, hkv, D = _qkv_heads(n, heads)
        cos, sin = torch.ones(D, device=device, dtype=dt), torch.zeros(D, device=device, dtype=dt)
        cache = [torch.zeros(1, hkv, 16, D, device=device, dtype=dt) for _ in range(2)]
        pos = torch.zeros(1, dtype=torch.long, device=device)

        sets = [((x, ss, g, w, eps, cos, sin, *cache, pos, H, PDL_OFF), quant)
                for w, quant in (_weight(fmt, n, K, device, dt) for _ in range(copies))]
        op = gemv_rmsnorm_qkv_rope
    else:
        rows = 2 * n if kind == "swiglu" else n
        res = torch.randn(1, n, device=device, dtype=dt)

        sets = [({"gemv": (x, w), "rmsnorm": (x, ss, g, w, eps, PDL_OFF), "residual": (x, w, res, PDL_OFF),
                  "swiglu": (x, ss, g, w, eps, PDL_OFF)}[kind], quant)
                for w, quant in (_weight(fmt, rows, K, device, dt) for _ in range(copies))]
        op = {"gemv": gemv, "rmsnorm": gemv_rmsnorm, "residual": gemv_residual_ss,
              "swiglu": gemv_rmsnorm_swiglu}[kind]
    return _cycling(op, sets)


def _cycling(op: Callable, sets: list[tuple[tuple, dict]]) -> Callable[[], object]:
    """A call of op on the next of its (arguments, keywords) sets each time, round and round: a launcher's
    copies, so that no timed call reads its weights from L2."""
    turn = [0]

    def call():
        a, kw = sets[turn[0] % len(sets)]
        turn[0] += 1
        return op(*a, **kw)

    return call


def _qkv_heads(n: int, heads: tuple[int, int] | None) -> tuple[int, int, int]:
    """(query heads, KV heads, head dim) of a qkv+RoPE launch of n rows: the form's heads ("qkv_rope:32/8") with
    the head dim they leave, else a head dim of 128, 64 or 32 and the rows split evenly over q, k and v heads
    where they divide."""
    if heads:
        H, hkv = heads
        return H, hkv, n // (H + 2 * hkv)
    D = next(d for d in (128, 64, 32) if n % d == 0)
    units = n // D
    hkv = units // 3 if units % 3 == 0 else 1
    return units - 2 * hkv, hkv, D


def _rows_launcher(form: str, n: int, K: int, device, dt, copies: int) -> Callable[[], object]:
    """launcher for a rows GEMV form ("rows_swiglu_int4", kernels/gemv_rows.py): the op at the rows the decode
    step hands it (gemv_rows.ROWS_MAX), each row with its own sum-of-squares partials, RoPE tables and cache
    entry."""
    from . import gemv_rows
    from .gemv import ss_partials

    form, heads = base_form(form.removeprefix(configs.ROWS_PREFIX))
    kind, _, fmt = form.rpartition("_")
    M, eps = max(gemv_rows.ROWS_MAX.values()), 1e-5
    x = torch.randn(M, K, device=device, dtype=dt)
    g = torch.ones(K, device=device, dtype=dt)
    ss = ss_partials(x).view(M, -1)  # each row's partials
    if kind == "qkv_rope":
        H, hkv, D = _qkv_heads(n, heads)
        cos, sin = torch.ones(M, D, device=device, dtype=dt), torch.zeros(M, D, device=device, dtype=dt)
        cache = [torch.zeros(M, hkv, 16, D, device=device, dtype=dt) for _ in range(2)]
        pos = torch.zeros(1, dtype=torch.long, device=device)
        sets = [((x, w, ss, g, eps, cos, sin, *cache, pos, H), quant)
                for w, quant in (_weight(fmt, n, K, device, dt) for _ in range(copies))]
        op = gemv_rows.small_m_qkv_rope
    else:
        res = torch.randn(M, n, device=device, dtype=dt)
        sets = [({"residual": (x, w, res), "swiglu": (x, w, ss, g, eps), "rmsnorm": (x, w, ss, g, eps)}[kind], quant)
                for w, quant in (_weight(fmt, 2 * n if kind == "swiglu" else n, K, device, dt)
                                 for _ in range(copies))]
        op = {"residual": gemv_rows.small_m_residual_ss, "swiglu": gemv_rows.small_m_swiglu_ss,
              "rmsnorm": gemv_rows.small_m_rmsnorm_ss}[kind]
    return _cycling(op, sets)


def _gemm_launcher(form: str, n: int, K: int, device, dt, copies: int) -> Callable[[], object]:
    """launcher for a small-M GEMM form: half its bucket's rows (8 of 16: the decode batches it serves), the
    RMSNorm prologue's rstd and g where the form has it, the SwiGLU form's 2n weight rows."""
    from .dequant import WFMT_INT4, WFMT_INT8
    from .gemm import parse_form, small_m_gemm, small_m_gemm_swiglu

    bucket, swiglu, wfmt, rmsnorm = parse_form(form)
    fmt = {WFMT_INT8: "int8", WFMT_INT4: "int4"}.get(wfmt, "")
    M = bucket // 2
    x = torch.randn(M, K, device=device, dtype=dt)
    norm = {"rstd": torch.ones(M, device=device), "g": torch.ones(K, device=device, dtype=dt)} if rmsnorm else {}
    op = small_m_gemm_swiglu if swiglu else small_m_gemm
    sets = [((x, w), {**quant, **norm}) for w, quant in (_weight(fmt, 2 * n if swiglu else n, K, device, dt)
                                                          for _ in range(copies))]
    return _cycling(op, sets)


def weight_bytes(form: str, n: int, K: int) -> int:
    """About the bytes one launch of form reads (fp16 weights; an attention's K and V for its KV heads)."""
    form, heads = base_form(form)
    fmt = form.rpartition("_")[2]
    per = {"int8": 1, "int4": 0.5}.get(fmt, 2)
    rows = 2 * n if form.startswith("swiglu") or "_swiglu" in form else n
    return int(2 * (heads or (32, 32))[1] * n * K * 2) if form == "attention" else int(rows * K * per)


def kernel_timer(form: str, n: int, K: int, device=None, calls: int = CALLS,
                 reps: int = REPS) -> Callable[[dict], float]:
    """Seconds per launch of form at (n, K) under a config: the fastest of `reps` runs of `calls` launches after
    one untimed launch (the compile). On a GPU the launches are captured in one CUDA graph and its replays timed
    by CUDA events, as the decode step runs them: timed one by one from Python, a 10-40 us kernel is timed at
    the host's launch rate, and on an H200 the table-hidden step then ran at 0.90 of the table's (docs/PERF.md).
    Elsewhere (Triton's interpreter) the wall clock."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    copies = 1
    if device.type == "cuda":
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
        copies = min(8, 1 + L2_ROTATE * l2 // max(weight_bytes(form, n, K), 1))
    call = launcher(form, n, K, device, copies=copies)

    def time_fn(config: dict) -> float:
        from ..harness import call_seconds  # the package's timing harness (imported here: no cycle at import)

        with forced(base_form(form)[0], n, K, config):
            call()
            return min(call_seconds(call, device, calls, reps))

    return time_fn


# (form, n, K) -> config -> seconds per launch; tests put a fake timer here
MAKE_TIMER: Callable[[str, int, int], Callable[[dict], float]] = kernel_timer
