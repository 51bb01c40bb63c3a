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
             captures its eager launches (which may use programmatic dependent launch)
"""
from __future__ import annotations

import functools
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
    inductor_config.fx_graph_cache = True
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)


def make_steps(mode: str, prefill: Callable, decode: Callable, model):
    """(prefill_fn, decode_fn) for a compile mode; sets or clears model.compiled_block."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r} (choose from {', '.join(COMPILE_MODES)})")
    model.compiled_block = model.compiled_fused_block = model.compiled_prepare = None
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
    if model.options.compiled_glue:  # each step's embedding / RoPE rows / mask, and the greedy pick
        from .generate import last_token_pick

        model.compiled_prepare = torch.compile(prepare_inputs, fullgraph=True, dynamic=False)
        decode = functools.partial(decode, pick=torch.compile(last_token_pick, fullgraph=True, dynamic=False))
    # a fused block made only of our kernels runs eagerly (inside the step's CUDA graph): Inductor would add
    # nothing but ~10 s of cold compile, and eager launches can use PDL
    model.compiled_fused_block = (None if model.fused_block_is_kernels_only()
                                  else torch.compile(run_fused_layer, fullgraph=True, dynamic=False))
    if model.output.weight.device.type == "cuda":
        decode = GraphedDecode(decode)
    return prefill, decode


class GraphedDecode:
    """CUDA graph over the whole decode step, captured by hand once per (batch, cache, flags).

    The step's inputs are copied into static buffers and the graph is replayed: one launch per token.
    The first call for a key runs the (compiled) step for real on a side stream (compiling it and
    giving this step's true result), the second captures and replays. The step is idempotent for the
    same inputs (it rewrites the same cache slot with the same values), so warming up on real inputs is safe.
    Outputs are static buffers overwritten by the next replay: callers copy what they keep."""

    def __init__(self, step: Callable):
        self.step = step
        self._graphs: dict = {}
        self._seen: set = set()

    def __call__(self, model, tok, input_pos, done, eos_ids, pad_id, start: int, suppress_eos: bool):
        # cache_version changes whenever the model reallocates its buffers: a graph never outlives them
        key = (id(model), model.cache_version, tok.shape[0], eos_ids.shape[0], start, suppress_eos)
        entry = self._graphs.get(key)
        if entry is None:
            if key not in self._seen:  # first call: compile + warm up outside any capture
                self._seen.add(key)
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(2):
                        result = self.step(model, tok, input_pos, done, eos_ids, pad_id, start, suppress_eos)
                torch.cuda.current_stream().wait_stream(stream)
                return result
            static_in = [t.clone() for t in (tok, input_pos, done, eos_ids, pad_id)]
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.step(model, *static_in[:3], *static_in[3:], start, suppress_eos)
            entry = self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        for dst, src in zip(static_in, (tok, input_pos, done, eos_ids, pad_id)):
            dst.copy_(src)
        graph.replay()
        return static_out

    def reset(self):
        self._graphs.clear()
        self._seen.clear()
