"""Helpers shared by the tools in scripts/ (each run as `python scripts/<tool>.py`, so this module is importable
by name): a log that prints and appends, variant specs for the command line, the decode shapes of a model,
the device a micro-benchmark runs on, a per-call timer, and the kernels' config-override hook as a context.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import statistics
import sys
from typing import Callable, Iterator

import torch

from llama_fast.harness import call_seconds


def logger(path: str | None) -> Callable[[str], None]:
    """say(msg): print it and, with a path, append it to that file (one write per line: a killed run keeps the
    lines it printed)."""
    def say(msg: str):
        print(msg, flush=True)
        if path:
            with open(path, "a") as log:
                log.write(msg + "\n")
    return say


def resolve_variants(keys: list[str], variants: dict) -> dict:
    """{key: Variant} for command-line variant keys: a harness.VARIANTS key as it is, or a spec built on one:
    base+flag switches a ForwardOptions flag on, base~flag switches it off (any number of them, e.g.
    fused-prefill-graph~pdl~graphed_prefill), base@C uses C-token prefill chunks (e.g. fused-glue@1024).
    ValueError, naming the key, for an unknown base or flag."""
    out = {}
    for key in keys:
        spec, _, chunk = key.partition("@")
        base, *ops = re.split(r"([+~])", spec)
        if base not in variants:
            raise ValueError(f"unknown variant {base!r} in {key!r} (known: {', '.join(variants)})")
        v = variants[base]
        if ops:
            if v.options is None:
                raise ValueError(f"{key!r}: {base} is a transformers baseline, it has no ForwardOptions flags")
            fields = {f.name for f in dataclasses.fields(v.options)}
            flags = {f: op == "+" for op, f in zip(ops[::2], ops[1::2])}
            unknown = sorted(set(flags) - fields)
            if unknown:
                raise ValueError(f"{key!r}: unknown ForwardOptions flag {', '.join(unknown)} "
                                 f"(known: {', '.join(sorted(fields))})")
            v = dataclasses.replace(v, options=dataclasses.replace(v.options, **flags))
        if chunk:
            if not chunk.isdigit() or int(chunk) < 1:
                raise ValueError(f"{key!r}: the prefill chunk after @ must be a positive integer")
            v = dataclasses.replace(v, prefill_chunk=int(chunk))
        out[key] = dataclasses.replace(v, key=key)
    return out


def check_quantize(ap, args) -> None:
    """For tools that load one model for all their variants (--variants, --quantize): refuse variants that carry
    their own weights' scheme (ap.error names them) and canonicalize args.quantize (an unknown scheme: ap.error)."""
    quantized = [k for k, v in args.variants.items() if v.quantize is not None]
    if quantized:  # every variant here runs the one model loaded (a variant cannot change its weights)
        ap.error(f"--variants {','.join(quantized)}: every variant runs the one model loaded; give "
                 "--quantize SCHEME with a fp16 variant (e.g. --quantize int8 --variants fused-gemv-early)")
    if args.quantize is not None:
        from llama_fast.quant import QuantError, parse_scheme

        try:
            args.quantize = parse_scheme(args.quantize).name
        except QuantError as e:
            ap.error(f"--quantize: {e}")


def decode_gemv_shapes(cfg) -> dict[str, tuple[int, int]]:
    """(rows, cols) of each decode GEMV's weight of a LlamaConfig, in the order a layer runs them; the head last."""
    return {"wqkv": (cfg.q_size + 2 * cfg.kv_size, cfg.dim), "wo": (cfg.dim, cfg.q_size),
            "w13": (2 * cfg.intermediate_size, cfg.dim), "w2": (cfg.dim, cfg.intermediate_size),
            "head": (cfg.vocab_size, cfg.dim)}


def kernel_device(name: str):
    """The torch device a micro-benchmark runs the Triton kernels on. On "cpu" they run in Triton's interpreter:
    TRITON_INTERPRET=1 is set here, so call this before anything imports llama_fast.kernels (the timings then
    mean nothing; the run checks that every launch still builds and runs)."""
    if name == "cpu":
        if "llama_fast.kernels" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("llama_fast.kernels was imported before TRITON_INTERPRET=1 could be set")
        os.environ["TRITON_INTERPRET"] = "1"
    return torch.device(name)


def time_per_call(fn: Callable[[], object], device, reps: int = 30, calls: int = 10) -> float:
    """Median seconds per call of fn. On CUDA, `calls` back-to-back calls are captured in one CUDA graph and the
    graph is replayed `reps` times (as in the decode step: launch overhead between kernels included, host
    overhead not); elsewhere the same calls are timed by the wall clock."""
    for _ in range(3 if device.type == "cuda" else 1):
        fn()
    return statistics.median(call_seconds(fn, device, calls, reps))


def rotating(make: Callable[[], object], n: int = 4) -> Callable[[], object]:
    """n items made by make(), handed out in turn by the returned function (so a timed loop cycles through more
    memory than L2 holds, as a real step does with each layer's weights or cache)."""
    items = [make() for _ in range(n)]
    i = [0]

    def nxt():
        i[0] = (i[0] + 1) % n
        return items[i[0]]
    return nxt


def trial_lookup(table: dict[str, dict]) -> Callable[[str, int, int], dict | None]:
    """A CONFIG_OVERRIDE answering from a trial table: {"form|n|K": config} for one shape (the key of the tuning
    cache, llama_fast/kernels/tuning.py), {"form@K": config} for one input width, {"form": config} for every
    launch of the form; None (the pinned config) for the rest."""
    return lambda form, n, K: table.get(f"{form}|{n}|{K}") or table.get(f"{form}@{K}") or table.get(form)


@contextlib.contextmanager
def config_override(table: dict[str, dict]) -> Iterator[None]:
    """llama_fast.kernels' eager launches take their configs from the trial table (trial_lookup) inside the
    block; the pinned configs again after it, however it ends."""
    from llama_fast.kernels import configs

    configs.CONFIG_OVERRIDE = trial_lookup(table)
    try:
        yield
    finally:
        configs.CONFIG_OVERRIDE = None
