"""What gets compiled and how. Only the step functions are compiled, never the Python loop.

Modes (the CLI's --compile):
  no         eager
  static     torch.compile(dynamic=False): one graph per shape; decode shapes never change
  dynamic    torch.compile(dynamic=True): symbolic shapes, no recompiles across prompt lengths
  fullgraph  fullgraph=True, static shapes, and on CUDA mode="reduce-overhead" (CUDA graphs over the
             whole decode step); prefill compiled the same way over fixed-size chunks
"""
from __future__ import annotations

from typing import Callable

import torch

COMPILE_MODES = ("no", "static", "dynamic", "fullgraph")


def configure_inductor():
    """Inductor settings in one place (called only when something is compiled)."""
    import torch._inductor.config as inductor_config

    inductor_config.coordinate_descent_tuning = True
    inductor_config.triton.unique_kernel_names = True
    inductor_config.fx_graph_cache = True
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)


def make_steps(mode: str, prefill: Callable, decode: Callable, device: torch.device):
    """(prefill_fn, decode_fn) for a compile mode."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r} (choose from {', '.join(COMPILE_MODES)})")
    if mode == "no":
        return prefill, decode
    configure_inductor()
    if mode == "static":
        return prefill, torch.compile(decode, dynamic=False)
    if mode == "dynamic":
        return torch.compile(prefill, dynamic=True), torch.compile(decode, dynamic=True)
    cuda = torch.device(device).type == "cuda"
    graph_mode = "reduce-overhead" if cuda else "default"
    return (torch.compile(prefill, fullgraph=True, dynamic=False),
            torch.compile(decode, fullgraph=True, dynamic=False, mode=graph_mode))
