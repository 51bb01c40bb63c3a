"""Programmatic dependent launch (PDL): when a decode kernel may start before the one before it finishes.

A kernel launched with PDL may start while the kernel before it in the stream is still running. Each of our
decode kernels first issues the loads that do not depend on that kernel (the first tile of its weights, which
nothing writes), then waits (gdc_wait: the previous kernel has finished and its writes are visible), and
lets the next kernel launch (gdc_launch_dependents) either right after that wait (PDL_TRIGGER_EARLY) or once
its main loop is done (PDL_TRIGGER_LATE). Nothing is written before the wait. Only one kernel can be in flight
ahead of another (each triggers its dependents after its own wait), and PDL launches captured in a CUDA graph
keep these programmatic edges (CUDA >= 12.3).

Which mode each kernel gets is the model's decision (model.pdl_mode, model.gemv_pdl_mode): the decode GEMVs
trigger early on the fastest path, so the next kernel's first loads run under their last wave; the attention
and the head trigger late. A kernel whose trigger came right after its wait put the next kernel's programs on
the SMs for the whole of its run: every kernel early lost 2 %, the attention early alone cost 6 %
(docs/PERF.md, tried and rejected).

PDL needs compute capability 9.0 or newer (Hopper on): on an Ampere card (an A10G is 8.6) every kernel launches
without it, and the same kernels, the same configs and the same CUDA graphs run. LLAMA_FAST_PDL=0 turns it off
everywhere, so a Hopper GPU can measure what the fastest path gets on a card without it.
"""
from __future__ import annotations

import os

import torch

try:  # grid dependency control (sm_90+); Triton >= 3.3
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - older Triton: the USE_PDL branches are never compiled
    gdc_launch_dependents = gdc_wait = None

# A kernel's USE_PDL: off; let the next kernel launch right after the wait; or after the main loop
PDL_OFF, PDL_TRIGGER_EARLY, PDL_TRIGGER_LATE = 0, 1, 2


def device_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def gpu_has_pdl(capability: tuple[int, int]) -> bool:
    """Programmatic dependent launch exists from compute capability 9.0 on."""
    return capability[0] >= 9


def pdl_enabled() -> bool:
    """LLAMA_FAST_PDL=0 launches every kernel without PDL (what a GPU without it runs)."""
    return os.environ.get("LLAMA_FAST_PDL", "1") != "0"


def interpreting() -> bool:
    """Whether Triton's CPU interpreter runs the kernels (TRITON_INTERPRET=1): no GPU, no gdc ops, and the
    programs of a launch run one after another."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_pdl(x: torch.Tensor, pdl: int) -> int:
    """The PDL mode to launch with: pdl where it applies (a CUDA device of compute capability >= 9, a Triton
    with grid dependency control, not Triton's CPU interpreter, which has no gdc ops, not LLAMA_FAST_PDL=0),
    else PDL_OFF."""
    # not inside torch.compile: its launches carry no PDL attribute, and Inductor cannot analyse the gdc inline
    # asm (it then treats every argument as mutated). This check sees Dynamo's tracing only, not a triton_op's
    # body traced by AOTAutograd: compiled callers pass PDL_OFF themselves (model.pdl_mode)
    ok = (x.is_cuda and gdc_wait is not None and not interpreting() and not torch.compiler.is_compiling()
          and pdl_enabled() and gpu_has_pdl(device_capability(x.device)))
    return int(pdl) if ok else PDL_OFF


def launch_kwargs(pdl: int) -> dict:
    """launch_pdl=True when pdl (a use_pdl result: never set inside torch.compile) asks for it."""
    return {"launch_pdl": True} if pdl else {}
