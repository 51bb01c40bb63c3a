"""Helpers shared by the device probes in scripts/ (run as `python scripts/<probe>.py`, so this module is
importable by name): a log that prints and appends, and a CUDA-graph timer for one small call."""
from __future__ import annotations

import dataclasses
import re
import statistics
from typing import Callable

import torch


def logger(path: str | None) -> Callable[[str], None]:
    """say(msg): print it and, with a path, append it to that file (flushed: a killed run keeps its lines)."""
    log = open(path, "a") if path else None

    def say(msg: str):
        print(msg, flush=True)
        if log:
            log.write(msg + "\n")
            log.flush()
    return say


def graph_time(fn: Callable[[], object], reps: int = 30, calls: int = 10) -> float:
    """Median seconds per call of fn, timed as `calls` back-to-back calls captured in one CUDA graph (as in
    the decode step: launch overhead between kernels included, host overhead not)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        g.replay()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) / calls / 1e3)
    return statistics.median(ts)


def lab_variants(keys: list[str], variants: dict) -> None:
    """Register lab-only keys in variants (harness.VARIANTS): base+flag switches a ForwardOptions flag on,
    base~flag switches it off (any number of them, e.g. fused-prefill-graph~pdl~graphed_prefill); base@C uses
    C-token prefill chunks (e.g. fused-glue@1024)."""
    for key in keys:
        if key in variants:
            continue
        base, _, chunk = key.partition("@")
        base, *ops = re.split(r"([+~])", base)
        v = variants[base]
        if ops:
            flags = {f: op == "+" for op, f in zip(ops[::2], ops[1::2])}
            v = dataclasses.replace(v, options=dataclasses.replace(v.options, **flags))
        if chunk:
            v = dataclasses.replace(v, prefill_chunk=int(chunk))
        variants[key] = dataclasses.replace(v, key=key)


def rotating(make: Callable[[], object], n: int = 4) -> Callable[[], object]:
    """n items made by make(), handed out in turn by the returned function (so a timed loop cycles through more
    memory than L2 holds, as a real step does with each layer's weights or cache)."""
    items = [make() for _ in range(n)]
    i = [0]

    def nxt():
        i[0] = (i[0] + 1) % n
        return items[i[0]]
    return nxt
