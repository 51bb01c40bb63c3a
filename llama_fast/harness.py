"""One timing / hash / memory / roofline harness, shared by the CLI and benchmarks/.

Variants are the rows of the ablation table: each names real code (ForwardOptions + compile mode +
prefill chunking + the weights' quantization) or a transformers baseline. Memory is in MB = 1e6 bytes, as in
the seed table.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from . import quant
from .api import output_hash
from .config import LlamaConfig
from .model import ForwardOptions
from .sampling import Sampling

MB = 1e6


# ------------------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    key: str
    label: str  # the "changes" column
    options: ForwardOptions | None = None  # None = transformers
    compile: str = "no"
    prefill_chunk: int | None = None
    hf_cache: str | None = None  # transformers baselines: None (dynamic cache) or "static"
    # weight-only quantization (llama_fast.quant scheme, canonical name) or None: the model dtype. A transformers
    # row with a scheme runs the same weights dequantized
    quantize: str | None = None

    @property
    def is_transformers(self) -> bool:
        return self.options is None

    @property
    def roofline_quantize(self) -> str | None:
        """The scheme whose bytes the row's decode reads (its roofline's): its own for llama_fast; None for
        transformers, which runs even a quantized model's weights dequantized, in the model dtype."""
        return None if self.is_transformers else self.quantize


_SEED1 = ForwardOptions(fused_qkv=False, fused_gate_up=False, static_mask=False, tensor_positions=False,
                        rope_cat=True)
_SEED2 = ForwardOptions(fused_qkv=False, fused_gate_up=False, static_mask=True, tensor_positions=False,
                        rope_cat=True)
_SEED3 = ForwardOptions(fused_qkv=True, fused_gate_up=False, static_mask=True, tensor_positions=False,
                        rope_cat=True)
_SEED4 = ForwardOptions(fused_qkv=True, fused_gate_up=False, static_mask=True, tensor_positions=True,
                        rope_cat=True)
_SEED6 = ForwardOptions(fused_qkv=True, fused_gate_up=False, static_mask=True, tensor_positions=True,
                        rope_cat=False)
_FAST = ForwardOptions()  # everything on

_FUSED = ForwardOptions(triton_gemv=True, fused_decode=True, decode_attention=True)
_FUSED_KERNELS = replace(_FUSED, fused_rope_cache=True, attention_one_launch=True)


_GEMV_EARLY = replace(_FUSED_KERNELS, pdl=True, compiled_glue=True, graphed_prefill=True, split_mlp=True,
                      pdl_gemv_early=True)
_GEMM = replace(_GEMV_EARLY, small_m_gemm=True)
_FASTEST_OPTIONS = replace(_GEMM, small_m_kernels=True, gemv_rows=True)


def _graphed(key: str, label: str, options: ForwardOptions, quantize: str | None = None) -> Variant:
    """A row of the fullgraph mode: regional compile, one CUDA graph per decode step, 512-token prefill chunks."""
    return Variant(key, label, options, compile="fullgraph", prefill_chunk=512, quantize=quantize)


VARIANTS: dict[str, Variant] = {v.key: v for v in [
    Variant("hf", "none (transformers generate)"),
    Variant("hf-static", "transformers cache_implementation=static (auto-compiled)", hf_cache="static"),
    Variant("kv", "preallocated KV cache + SDPA + shared key/value linear", _SEED1),
    Variant("mask", "+ preallocated attention mask", _SEED2),
    Variant("qkv", "+ shared query/key/value linear", _SEED3),
    Variant("tensor-pos", "+ valid_past_index as tensor, control flow removed", _SEED4),
    Variant("tensor-pos-static", "same", _SEED4, compile="static"),
    Variant("rope", "+ rotate_half without torch.cat", _SEED6, compile="static"),
    Variant("gate-up", "+ fused gate/up linear", _FAST, compile="static"),
    _graphed("graphs", "+ one CUDA graph over the decode step, regional compile, 512-token prefill chunks "
             "(fullgraph)", _FAST),
    _graphed("gemv", "+ Triton GEMV for the decode projections", ForwardOptions(triton_gemv=True)),
    _graphed("fused", "+ RMSNorm, SwiGLU and residual adds fused into the decode GEMVs, split-K decode "
             "attention", _FUSED),
    _graphed("fused-eager", "+ RoPE and the K/V cache write in the wqkv GEMV, one-kernel attention: the decode "
             "block is only our kernels, run uncompiled in the step's CUDA graph", _FUSED_KERNELS),
    _graphed("fused-pdl", "+ programmatic dependent launch: each decode kernel loads its first weight tile "
             "before waiting for the one before it", replace(_FUSED_KERNELS, pdl=True)),
    _graphed("fused-glue", "+ the step's input preparation (embedding, RoPE rows, mask) and greedy pick compiled "
             "too", replace(_FUSED_KERNELS, pdl=True, compiled_glue=True)),
    _graphed("fused-prefill-graph", "+ each 512-token prefill chunk replayed from one CUDA graph, its MLP "
             "in two hidden halves (the graph's memory pool holds the chunk's activations)",
             replace(_FUSED_KERNELS, pdl=True, compiled_glue=True, graphed_prefill=True, split_mlp=True)),
    _graphed("fused-gemv-early", "+ the decode GEMVs let the next kernel launch right after their wait (the "
             "attention's K/V loads run under the wqkv GEMV's last wave)",
             _GEMV_EARLY),
    _graphed("fused-gemm", "+ batch 2-16 decode projections by a small-M tensor-core GEMM (split-K; RMSNorm "
             "prologue, SwiGLU and residual epilogues) instead of cuBLAS", _GEMM),
    _graphed("fused-gemm-kernels", "+ batch 2-16 decode blocks as our kernels only, uncompiled in the step's CUDA "
             "graph: RMSNorm from the residual GEMMs' partials, RoPE and the K/V cache write in the wqkv GEMM, PDL; "
             "quantized weights at 2 rows by the batch-1 GEMVs over both rows",
             _FASTEST_OPTIONS),
    _graphed("int8", "+ int8 weights (symmetric, one scale per output channel), dequantized in the decode GEMVs",
             _FASTEST_OPTIONS, quantize="int8"),
    _graphed("int4", "int4 weights instead (a scale and an offset per 128 weights along K), dequantized in the "
             "decode GEMVs", _FASTEST_OPTIONS, quantize="int4:g128"),
]}
ABLATION = ["hf", "kv", "mask", "qkv", "tensor-pos", "tensor-pos-static", "rope", "gate-up", "graphs", "gemv",
            "fused", "fused-eager", "fused-pdl", "fused-glue", "fused-prefill-graph", "fused-gemv-early", "fused-gemm",
            "fused-gemm-kernels", "int8", "int4"]
# batch 1 runs fused-gemv-early's path (decode -2.4 / -2.2 % against fused-prefill-graph in two H200 processes);
# batch 2-16 +5.6 / +4.3 / +1.8 % at 2 / 8 / 16 rows for fused-gemm against it, then +5.5 / +4.5 / +2.9 % for the
# kernels-only step against fused-gemm, in one H200 process each (docs/PERF.md)
FASTEST = "fused-gemm-kernels"


def variant_for(preallocate: bool, compile: str, quantize: str | None = None) -> Variant:
    """The CLI's seed semantics: no --preallocate = transformers; --preallocate = llama_fast (fastest code
    path) compiled as asked. quantize: the weights' scheme (canonical name) or None."""
    if not preallocate:
        v = VARIANTS["hf"] if compile == "no" else VARIANTS["hf-static"]
        return v if quantize is None else replace(v, quantize=quantize)
    fastest = VARIANTS[FASTEST]
    chunk = fastest.prefill_chunk if compile == "fullgraph" else None
    return Variant(f"llama_fast-{compile}", f"llama_fast, compile={compile}", fastest.options, compile=compile,
                   prefill_chunk=chunk, quantize=quantize)


def fallback_reason(variant: Variant, device: torch.device | str) -> str | None:
    """What of the variant's code path needs CUDA and so does not run on `device`, or None when all of it runs.

    Off CUDA such a row still runs, under the same label, on the fallback its code has: the fullgraph mode's
    regional compile and prefill chunks without the CUDA graphs, torch ops in place of the Triton kernels
    (model.triton_kernels_apply), launches without PDL. Its numbers are that fallback's, not the CUDA path's."""
    if variant.is_transformers or torch.device(device).type == "cuda":
        return None
    opts = variant.options
    missing = []
    if variant.compile == "fullgraph":
        missing.append("CUDA graphs")
    if opts.triton_gemv or opts.fused_decode or opts.decode_attention or opts.small_m_gemm:
        missing.append("Triton kernels")
    if opts.pdl:
        missing.append("PDL")
    if not missing:
        return None
    return f"CUDA only, not run on {torch.device(device).type}: {', '.join(missing)}"


# ------------------------------------------------------------------------------------------- workload
@dataclass(frozen=True)
class Workload:
    batch: int = 1
    prompt_len: int = 1000
    new_tokens: int = 200
    cache_length: int | None = None  # None = prompt_len + new_tokens
    sampling: Sampling | None = None  # None = greedy; a seeded Sampling draws the same tokens in every run

    @property
    def cache(self) -> int:
        return self.cache_length or self.prompt_len + self.new_tokens

    @property
    def pick(self) -> str:
        """'greedy', or the sampling parameters as the CSV and the table headers show them."""
        s = self.sampling
        if s is None:
            return "greedy"
        parts = [f"temperature={s.temperature:g}"] + ([f"top_k={s.top_k}"] if s.top_k is not None else [])
        parts += ([f"top_p={s.top_p:g}"] if s.top_p is not None else []) + [f"seed={s.seed}"]
        return "sampled " + " ".join(parts)

    def prompt(self) -> torch.Tensor:
        """The seed's prompt: torch.randint(1, 10, (batch, prompt_len)) right after manual_seed(42)."""
        torch.manual_seed(42)
        return torch.randint(1, 10, (self.batch, self.prompt_len))


# ------------------------------------------------------------------------------------------- runners
class Runner:
    """Something that generates for a workload: llama_fast in a variant, or transformers."""

    def __init__(self, variant: Variant, generate: Callable[[torch.Tensor], torch.Tensor], tokenizer: Any,
                 device: torch.device, graph_pool_bytes: Callable[[], int] | None = None):
        self.variant, self._generate, self.tokenizer, self.device = variant, generate, tokenizer, device
        self._graph_pool_bytes = graph_pool_bytes

    def graph_pool_bytes(self) -> int:
        """Memory held by llama_fast's hand-captured CUDA graphs, which max_memory_allocated does not see: added
        to every measured peak of ours. (transformers' own CUDA graphs are not added: it is our peak we bound.)"""
        return self._graph_pool_bytes() if self._graph_pool_bytes else 0

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._generate(input_ids)


def fast_runner(fast, variant: Variant, workload: Workload) -> Runner:
    """A LlamaFast set to the variant's code path; exactly workload.new_tokens new tokens."""
    s = workload.sampling
    kwargs = {} if s is None else dict(do_sample=True, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                       seed=s.seed)

    def generate(ids):
        return fast.generate(ids, max_new_tokens=workload.new_tokens, min_new_tokens=workload.new_tokens, **kwargs)

    fast.configure(options=variant.options, compile=variant.compile, prefill_chunk=variant.prefill_chunk)
    fast.cache_length = workload.cache
    return Runner(variant, generate, fast.tokenizer, fast.device, fast.graph_pool_bytes)


def hf_runner(hf_model, tokenizer, variant: Variant, workload: Workload) -> Runner:
    """transformers generate, exactly workload.new_tokens new tokens: greedy, or sampling with the same parameters
    (top_k 0 / top_p 1.0 switch a filter off, where transformers' generation config would default top_k to 50),
    torch's generator seeded before each call."""
    device = hf_model.device
    pad = getattr(tokenizer, "pad_token_id", None)
    s = workload.sampling
    kwargs = dict(max_new_tokens=workload.new_tokens, min_new_tokens=workload.new_tokens, do_sample=s is not None,
                  pad_token_id=pad if pad is not None else 0)
    if s is not None:
        kwargs.update(temperature=s.temperature, top_k=s.top_k or 0, top_p=s.top_p if s.top_p is not None else 1.0)
    if variant.hf_cache:
        kwargs["cache_implementation"] = variant.hf_cache

    def generate(ids):
        ids = ids.to(device)
        if s is not None:
            torch.manual_seed(s.seed or 0)
        return hf_model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)

    return Runner(variant, generate, tokenizer, device)


# ------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DeviceTimer:
    """Wall time of a region with the device drained at both ends (CUDA events on GPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1e3
        else:
            self.seconds = time.perf_counter() - self._t0
        return False


class PeakMemory:
    """Peak memory of a region in bytes: max_memory_allocated on GPU, peak RSS (VmHWM) on CPU, plus held():
    memory the allocator's peak does not see (a runner's CUDA-graph pools: Runner.graph_pool_bytes).
    `start` is what was in use when the region began (memory_allocated / RSS), `growth` the peak above it."""

    def __init__(self, device: torch.device, held: Callable[[], int] | None = None):
        self.device = device
        self.held = held
        self.peak = 0
        self.start = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            _reset_peak_rss()
            self.start = _rss()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _peak_rss()
        if self.held is not None:
            self.peak += self.held()
        return False

    @property
    def growth(self) -> int:
        """The peak above what was in use at the start: the region's own most memory at once."""
        return max(0, self.peak - self.start)


def _reset_peak_rss():
    try:  # Linux: writing 5 to clear_refs resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _status_kb(field: str) -> int | None:
    """A size field of /proc/self/status (VmHWM, VmRSS) in bytes; None where there is no procfs."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss() -> int:
    peak = _status_kb("VmHWM")
    if peak is not None:
        return peak
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss() -> int:
    """The current RSS; where it cannot be read, the peak so far (then growth is measured from there)."""
    rss = _status_kb("VmRSS")
    return rss if rss is not None else _peak_rss()


@dataclass
class Measurement:
    variant: Variant
    workload: Workload
    times: list[float]
    warmup_s: float
    max_mem_bytes: int
    hash: str
    output_ids: torch.Tensor = field(repr=False)
    # every timed run generated the same tokens (greedy, or sampling with its seed): False points at a race in a
    # kernel or a collective, since one process repeats the same work on the same inputs
    runs_agree: bool = True

    @property
    def tokens(self) -> int:
        return self.workload.batch * self.workload.new_tokens

    @property
    def tok_per_s(self) -> float:  # median run
        return self.tokens / statistics.median(self.times)

    @property
    def tok_per_s_best(self) -> float:  # fastest run
        return self.tokens / min(self.times)

    @property
    def max_mem_mb(self) -> float:
        return self.max_mem_bytes / MB


def measure(runner: Runner, workload: Workload, warmup_runs: int = 1, num_runs: int = 3) -> Measurement:
    """Warm-up runs (the first one's time is reported: compile included), then timed runs.

    tok/s = batch * new tokens / time of one generate call, prefill included."""
    ids = workload.prompt()
    dev = runner.device
    warmup_s = 0.0
    for i in range(max(warmup_runs, 0)):
        with DeviceTimer(dev) as t:
            runner(ids)
        if i == 0:
            warmup_s = t.seconds
    times, outs = [], []
    with PeakMemory(dev, runner.graph_pool_bytes) as mem:
        for _ in range(num_runs):
            with DeviceTimer(dev) as t:
                out = runner(ids)
            times.append(t.seconds)
            outs.append(out.clone())  # after the timer; the runner may hand back a buffer the next run overwrites
    out = outs[-1].cpu()
    return Measurement(runner.variant, workload, times, warmup_s, mem.peak, output_hash(runner.tokenizer, out), out,
                       outputs_agree(outs))


def outputs_agree(outputs: list[torch.Tensor]) -> bool:
    """Whether every generate call's tokens equal the first's: one process repeating the same work on the same
    inputs (greedy, or sampling with its seed), so a difference is a race in a kernel or a collective."""
    return all(torch.equal(outputs[0], o) for o in outputs[1:])


def call_seconds(fn: Callable[[], object], device: torch.device, calls: int, reps: int) -> list[float]:
    """Seconds per call of fn in each of `reps` runs of `calls` back-to-back calls. On CUDA the calls are captured
    once in a CUDA graph and each run replays it, as the decode step runs its kernels (the gaps between kernels
    counted, the host's launch rate not); elsewhere they run one after another under the wall clock."""
    graph = None
    if device.type == "cuda":
        synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()

    def run():
        if graph is not None:
            graph.replay()
        else:
            for _ in range(calls):
                fn()

    times = []
    for _ in range(reps):
        with DeviceTimer(device) as t:
            run()
        times.append(t.seconds / calls)
    if graph is not None:
        graph.reset()
    return times


# ------------------------------------------------------------------------------------------- roofline
@dataclass(frozen=True)
class Ceilings:
    matmul_flops: float  # FLOP/s of a large matrix product in the model dtype
    copy_bytes: float  # bytes/s of a large device copy, read + write counted


def median_seconds(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median wall time of `reps` calls of fn, each timed by DeviceTimer (the device drained at both ends)."""
    ts = []
    for _ in range(reps):
        with DeviceTimer(device) as t:
            fn()
        ts.append(t.seconds)
    return statistics.median(ts)


def measure_ceilings(device: torch.device, dtype: torch.dtype) -> Ceilings:
    """Measure the two ceilings on this device in this process (median of several runs)."""
    cuda = device.type == "cuda"
    n = 8192 if cuda else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    numel = (1 << 29) if cuda else (1 << 24)  # 1 GiB of fp16 on GPU
    src = torch.randn(numel, device=device, dtype=torch.float16)
    dst = torch.empty_like(src)

    def timed(fn, reps):
        fn()  # warm: first-call setup (cuBLAS handle, allocation) is not the rate
        return median_seconds(fn, device, reps)

    mm = timed(lambda: a @ b, 10)
    cp = timed(lambda: dst.copy_(src), 10)
    return Ceilings(matmul_flops=2 * n ** 3 / mm, copy_bytes=2 * src.numel() * src.element_size() / cp)


def weight_bytes(cfg: LlamaConfig, dtype: torch.dtype, include_embedding: bool = True,
                 quantize: str | None = None) -> int:
    """Bytes of the weights in dtype; with a quantization scheme, as llama_fast.quant stores them (quantized
    linears with their scales and offsets, everything else in dtype: quant.quantized_bytes)."""
    if quantize is not None:
        return quant.quantized_bytes(cfg, quantize, dtype, include_embedding=include_embedding)
    elem = torch.empty((), dtype=dtype).element_size()
    return cfg.num_parameters(include_embedding=include_embedding) * elem


def roofline_tok_per_s(cfg: LlamaConfig, dtype: torch.dtype, w: Workload, ceilings: Ceilings,
                       quantize: str | None = None) -> float:
    """tokens / (prefill FLOPs / matmul rate + sum over decode steps of bytes / copy bandwidth).

    Per-step bytes = non-embedding weight bytes (output head included) + the KV cache read at that step. With a
    quantization scheme the weight bytes are those really read: quantized weights + scales + offsets (the
    prefill FLOPs are the same: it multiplies dequantized weights)."""
    n_params = cfg.num_parameters(include_embedding=False)
    B, T, N = w.batch, w.prompt_len, w.new_tokens
    prefill_flops = 2 * n_params * B * T + 2 * cfg.n_layers * B * T * T * cfg.n_heads * cfg.head_dim
    elem = torch.empty((), dtype=dtype).element_size()
    wbytes = weight_bytes(cfg, dtype, include_embedding=False, quantize=quantize)
    kv_per_pos = 2 * cfg.n_layers * B * cfg.n_kv_heads * cfg.head_dim * elem
    decode_bytes = sum(wbytes + kv_per_pos * (T + i) for i in range(1, N))
    seconds = prefill_flops / ceilings.matmul_flops + decode_bytes / ceilings.copy_bytes
    return B * N / seconds


def memory_budget_bytes(cfg: LlamaConfig, dtype: torch.dtype, w: Workload, allowance_bytes: int,
                        quantize: str | None = None) -> int:
    """Weights (as stored: quantized with a scheme) + KV cache for the workload + a stated allowance."""
    return (weight_bytes(cfg, dtype, quantize=quantize) + cfg.kv_cache_bytes(w.batch, w.cache, dtype)
            + allowance_bytes)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def git_commit(cwd: str | None = None) -> str:
    """Short hash, plus -dirty when the tree has changes; $LLAMA_FAST_COMMIT where the code runs from a copy
    without git metadata (e.g. a GPU runner given a tarball); 'unknown' otherwise."""
    import subprocess

    if os.environ.get("LLAMA_FAST_COMMIT"):
        return os.environ["LLAMA_FAST_COMMIT"]

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


# ------------------------------------------------------------------------------------------- correctness
@torch.no_grad()
def teacher_forced_check(hf_model, output_ids: torch.Tensor, prompt_len: int, tol: float):
    """Run the reference over our output; each generated token must be the reference's argmax or within
    `tol` of its max logit. Returns (ok, first bad step or None, largest logit gap)."""
    ids = output_ids.to(hf_model.device)
    logits = hf_model(ids).logits[:, prompt_len - 1:-1].float()  # (B, N, V): predicts each new token
    chosen = ids[:, prompt_len:]
    gap = logits.max(-1).values - logits.gather(-1, chosen[..., None])[..., 0]  # (B, N)
    bad = (gap > tol).any(0).nonzero()
    first = int(bad[0]) if len(bad) else None
    return first is None, first, float(gap.max())


# ------------------------------------------------------------------------------------------- machine identity
# GPU families, most specific first: expected hashes and benchmark baselines are kept per family / per model.
GPU_FAMILIES = ("GH200", "H200", "H100", "H800", "H20", "B200", "B100", "A100", "A800", "A10G", "A10", "A40", "A30",
                "L40S", "L40", "L4", "T4", "V100", "P100", "A6000", "A5000", "A4000")


def device_family(device: torch.device | str) -> str:
    """'H100', 'A10G', ... for a GPU (the full name's slug when no family matches); 'cpu' on CPU."""
    import re

    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device)
    for fam in GPU_FAMILIES:
        if re.search(rf"\b{fam}\b", name, flags=re.IGNORECASE):
            return fam
    return device_slug(device)


def device_slug(device: torch.device | str) -> str:
    """Filesystem-safe device model name: 'nvidia-h100-80gb-hbm3'; 'cpu' on CPU."""
    import re

    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def environment_info(device: torch.device | str) -> dict[str, Any]:
    """GPU name and count, driver, CUDA, torch and transformers versions: what a timing depends on."""
    import subprocess

    import transformers

    device = torch.device(device)
    info: dict[str, Any] = {"device": device_name(device), "device_family": device_family(device),
                            "torch": torch.__version__, "transformers": transformers.__version__,
                            "cuda": torch.version.cuda, "gpu_count": 0, "gpu_name": None, "driver": None}
    if device.type == "cuda":
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_name"] = torch.cuda.get_device_name(device)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=True).stdout.split()
            info["driver"] = out[0] if out else None
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def synchronized(runner: Runner, input_ids: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A zero-argument call of `runner` on `input_ids` that returns only once the device is drained
    (what an external timer such as pytest-benchmark must time)."""
    def call():
        out = runner(input_ids)
        synchronize(runner.device)
        return out

    return call
