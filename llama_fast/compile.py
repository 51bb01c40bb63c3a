"""What gets compiled and how. Only the step functions are compiled, never the Python loop.

Modes (the CLI's --compile):
  no         eager
  static     torch.compile(dynamic=False): one graph per shape; decode shapes never change
  dynamic    torch.compile(dynamic=True): symbolic shapes, no recompiles across prompt lengths
  fullgraph  regional: one fullgraph=True, static-shape compile of a transformer block serves every
             layer (compiled once per shape: decode and the prefill chunk); on CUDA the whole decode
             step (compiled blocks, cache writes, argmax, EOS flags) is captured in one CUDA graph
             (GraphedDecode); prefill runs over fixed-size chunks, so a new prompt length never recompiles.
             A batch-1 decode block made only of llama_fast's Triton kernels is not compiled: the graph
             captures its eager launches (which may use programmatic dependent launch). With
             ForwardOptions.graphed_prefill, each prefill chunk is a captured CUDA graph too (GraphedPrefill)
"""
from __future__ import annotations

from typing import Callable

import torch

COMPILE_MODES = ("no", "static", "dynamic", "fullgraph")


def configure_inductor():
    """Inductor settings in one place (called only when something is compiled)."""
    import os

    import torch._inductor.config as inductor_config

    # LLAMA_FAST_COORDINATE_DESCENT=0 trades a little step speed for a shorter cold compile
    inductor_config.coordinate_descent_tuning = os.environ.get("LLAMA_FAST_COORDINATE_DESCENT", "1") != "0"
    inductor_config.triton.unique_kernel_names = True
    # the FX graph cache stays as torch configures it (on by default; TORCHINDUCTOR_FX_GRAPH_CACHE=0 or a
    # config.patch turns it off): setting it here overrode both
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    tag_compile_caches()


CACHE_TAG_MARK = "llama_fast-"


def tag_compile_caches() -> str:
    """Put kernel_fingerprint() into torch.compile's cache keys (torch.compiler.config.cache_key_tag, after any
    tag of the caller's own) and return the tag. A traced block calls our kernels through custom ops whose
    launch (the kernel, its tile config) is decided while tracing, from kernels.configs and the GPU's table;
    torch's on-disk caches key the graph on the ops, not on that choice, so without the tag a process whose
    pinned configs or kernel sources differ would be handed another one's compiled launches."""
    cfg = getattr(torch.compiler, "config", None)
    if cfg is None or not hasattr(cfg, "cache_key_tag"):  # a torch without the tag: nothing to key on
        return ""
    base = cfg.cache_key_tag.split("|" + CACHE_TAG_MARK)[0].split(CACHE_TAG_MARK)[0]
    ours = CACHE_TAG_MARK + kernel_fingerprint()
    cfg.cache_key_tag = f"{base}|{ours}" if base else ours
    return cfg.cache_key_tag


def kernel_fingerprint() -> str:
    """A digest of what a trace reads from llama_fast's kernel package (every module of it; none where Triton is
    missing and no kernel can be traced): each module's source and its upper-case settings of plain types, as
    they stand now (a tool or test may have changed them), and where this GPU's configs come from (its key, the
    table on or hidden, an unmeasured GPU's tuned choices). Stable across processes for the same code, settings
    and tuning cache; with a configs.CONFIG_OVERRIDE hook set (config trials), new at every call."""
    import hashlib
    import importlib
    import importlib.util
    import pkgutil

    h = hashlib.sha256()
    if importlib.util.find_spec("triton") is None:
        return h.hexdigest()[:16]
    package = importlib.import_module("llama_fast.kernels")
    paths = getattr(package, "__path__", None)  # None: a stand-in module (tests swap one in): only its settings
    names = ["llama_fast.kernels"] + sorted(f"llama_fast.kernels.{m.name}" for m in pkgutil.iter_modules(paths or []))
    for name in names:
        mod = importlib.import_module(name)
        h.update(name.encode())
        path = getattr(mod, "__file__", None)
        if path:
            with open(path, "rb") as f:
                h.update(f.read())
        for key in sorted(k for k in vars(mod) if k.isupper()):
            h.update(f"{key}={_stable_repr(vars(mod)[key])}".encode())
    cfg = vars(importlib.import_module("llama_fast.kernels.configs")) if paths else {}
    if cfg.get("CONFIG_OVERRIDE") is not None:  # a hook's answers cannot be digested: no key shared with any other
        import uuid

        h.update(uuid.uuid4().bytes)
    if "table_enabled" in cfg:  # where this GPU's configs come from: the table, or its tuning cache's choices
        gpu, table = cfg["current_gpu_key"](), cfg["table_enabled"]()
        h.update(f"gpu={gpu} table={table}".encode())
        if gpu is not None and (not table or gpu not in cfg["CONFIG_TABLE"]):
            h.update(_stable_repr(importlib.import_module("llama_fast.kernels.tuning").load(gpu).configs).encode())
    return h.hexdigest()[:16]


def _stable_repr(value) -> str:
    """repr without memory addresses: containers recursively, a function or other object by its type and name."""
    if isinstance(value, (bool, int, float, str, bytes, type(None))):
        return repr(value)
    if isinstance(value, dict):
        items = sorted((_stable_repr(k), _stable_repr(v)) for k, v in value.items())
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    if isinstance(value, (list, tuple, set, frozenset)):
        parts = [_stable_repr(v) for v in value]
        return f"{type(value).__name__}({', '.join(sorted(parts) if isinstance(value, (set, frozenset)) else parts)})"
    return f"<{type(value).__qualname__} {getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}>"


def make_steps(mode: str, prefill: Callable, decode: Callable, model):
    """(prefill_fn, decode_fn) for a compile mode; sets or clears model.compiled_block."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r} (choose from {', '.join(COMPILE_MODES)})")
    model.compiled_block = model.compiled_fused_block = model.compiled_prepare = model.compiled_pick = None
    if mode == "no":
        return prefill, decode
    configure_inductor()
    if mode == "static":
        return prefill, torch.compile(decode, dynamic=False)
    if mode == "dynamic":
        return torch.compile(prefill, dynamic=True), torch.compile(decode, dynamic=True)
    # fullgraph: regional compilation, one fullgraph compile of a block serves all layers (and is cheap to
    # build: the cold warm-up stays short), and on CUDA a hand-captured graph over the whole decode step.
    from .model import prepare_inputs, run_fused_layer, run_layer

    model.compiled_block = torch.compile(run_layer, fullgraph=True, dynamic=False)
    if model.options.compiled_glue:  # each batch-1 step's embedding / RoPE rows / mask, and the greedy pick
        from .generate import last_token_pick

        # a few tiny kernels: coordinate-descent tuning would only add compile time to the cold warm-up
        untuned = {"coordinate_descent_tuning": False}
        model.compiled_prepare = torch.compile(prepare_inputs, fullgraph=True, dynamic=False, options=untuned)
        model.compiled_pick = torch.compile(last_token_pick, fullgraph=True, dynamic=False, options=untuned)
    # a fused block made only of our kernels runs eagerly (inside the step's CUDA graph): Inductor would add
    # nothing but ~10 s of cold compile, and eager launches can use PDL
    model.compiled_fused_block = (None if model.fused_block_is_kernels_only()
                                  else torch.compile(run_fused_layer, fullgraph=True, dynamic=False))
    if model.tok_embeddings.weight.device.type == "cuda":
        pool = GraphPool()  # the prefill graph's activations and the decode step's share memory
        decode = GraphedDecode(decode, pool)
        if model.options.graphed_prefill:
            prefill = GraphedPrefill(prefill, pool)
    return prefill, decode


class _StepGraphs:
    """CUDA graphs over a step function, captured by hand once per key.

    The step's tensor inputs are copied into static buffers and the graph is replayed: one launch per call.
    The first call for a key runs the (compiled) step for real on a side stream (compiling it and giving
    this call's true result), the second captures and replays. A step must be idempotent for the same
    inputs (decode and prefill rewrite the same cache slots with the same values), so warming up on real
    inputs is safe. Outputs are static buffers overwritten by the next replay: callers copy what they keep.
    Graphs share one memory pool (they never run at the same time): make_steps gives its decode and prefill
    graphs the same GraphPool. pool_bytes: the device memory their captures reserved (held for as long as the
    graphs live; max_memory_allocated does not see it, so the harness adds it to a measured peak)."""

    def __init__(self, step: Callable, pool: "GraphPool"):
        self.step = step
        self._graphs: dict = {}
        self._seen: set = set()
        self._pool = pool
        self.pool_bytes = 0

    def _replay(self, key, tensors: tuple, run: Callable, sticky: int = 0):
        """run(*tensors) through the graph of key (tensors: the step's tensor inputs, in run's order). The last
        `sticky` inputs stay the same over many calls (a generate call's sampling parameters): each is copied
        into the graph only when another tensor, or the same one written in place, comes back."""
        entry = self._graphs.get(key)
        if entry is None:
            if key not in self._seen:  # first call: compile + warm up outside any capture
                self._seen.add(key)
                stream = self._pool.stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(2):
                        result = run(*tensors)
                torch.cuda.current_stream().wait_stream(stream)
                return result
            static_in = [t.clone() for t in tensors]
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool.handle(), stream=self._pool.stream()):
                # read after the capture context emptied the allocator's cache: what the capture adds from here
                # on is the private pool's (it takes fresh segments)
                reserved = torch.cuda.memory_reserved()
                static_out = run(*static_in)
            self.pool_bytes += torch.cuda.memory_reserved() - reserved
            entry = self._graphs[key] = (graph, static_in, static_out, [None] * sticky)
        graph, static_in, static_out, copied = entry
        copy_inputs(static_in, tensors, copied)
        graph.replay()
        return static_out

    def reset(self):
        self._graphs.clear()
        self._seen.clear()
        self.pool_bytes = 0


def copy_inputs(static_in: list, tensors: tuple, copied: list):
    """Copy a step's inputs into a graph's static buffers; the last len(copied) are sticky: copied only when
    another tensor, or the same one written in place since, comes back (copied[i] records what was copied)."""
    n = len(tensors) - len(copied)
    for dst, src in zip(static_in[:n], tensors[:n]):
        dst.copy_(src)
    for i, (dst, src) in enumerate(zip(static_in[n:], tensors[n:])):
        # the tensor itself is held (not its id, which a later tensor could reuse once this one is freed)
        if copied[i] is None or copied[i][0] is not src or copied[i][1] != src._version:
            dst.copy_(src)
            copied[i] = (src, src._version)


class GraphPool:
    """A CUDA-graph memory pool handle and the one side stream that warms up and captures every graph in it,
    both made on first use (so building steps needs no CUDA call). One stream: cuBLAS keeps a workspace per
    stream, so the capture reuses the warm-up's instead of adding one to the pool."""

    def __init__(self):
        self._handle = None
        self._stream = None

    def handle(self):
        if self._handle is None:
            self._handle = torch.cuda.graph_pool_handle()
        return self._handle

    def stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream


class GraphedDecode(_StepGraphs):
    """The whole decode step (blocks, cache writes, argmax, EOS flags) as one CUDA graph per
    (batch, cache, flags): one launch per token."""

    def __call__(self, model, tok, input_pos, done, eos_ids, pad_id, start: int, suppress_eos: bool,
                 sampler=None):
        # cache_version changes whenever the model reallocates its buffers: a graph never outlives them. A
        # sampling step is its own graph per filter combination; its parameters are inputs like the tokens.
        flags = None if sampler is None else (sampler.use_top_k, sampler.use_top_p)
        key = (id(model), model.cache_version, tok.shape[0], eos_ids.shape[0], start, suppress_eos, flags)
        tensors = (tok, input_pos, done, eos_ids, pad_id)
        if sampler is None:
            return self._replay(key, tensors, lambda *t: self.step(model, *t, start, suppress_eos))
        return self._replay(key, tensors + (sampler.floats, sampler.ints),
                            lambda *t: self.step(model, *t[:5], start, suppress_eos,
                                                 sampler._replace(floats=t[5], ints=t[6])), sticky=2)


class GraphedPrefill(_StepGraphs):
    """One prefill chunk (every block, and the head at one position) as one CUDA graph per (batch, chunk
    length, cache). Eagerly, a chunk is ~30 host calls of the compiled block, each launching its kernels from
    Python; at a 512-token chunk of a 7B model the host can fall behind the GPU."""

    def __call__(self, model, idx, input_pos, start: int, logits_index):
        key = (id(model), model.cache_version, *idx.shape, start)
        return self._replay(key, (idx, input_pos, logits_index),
                            lambda i, p, li: self.step(model, i, p, start, li))
