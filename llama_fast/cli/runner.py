"""Running a Plan: each variant at each workload point, timed (or profiled) by llama_fast.harness.

Transformers rows run first on one transformers model, then every llama_fast row on one LlamaFast configured
per row, so each model is loaded once per weight quantization (Variant.quantize: the rows of one scheme share
a load, the previous model freed before the next loads). A point that runs out of memory becomes an OOM row
and the run goes on; any other error propagates, after the rows already finished were appended to the CSV.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from .. import api, harness, loading, parallel, progress
from ..harness import Measurement, Variant, Workload
from . import report
from .args import Plan


def is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):  # torch.cuda.OutOfMemoryError is the same class
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def _free_memory(device: torch.device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class Result:
    variant: Variant
    workload: Workload
    measurement: Measurement | None  # None = OOM
    roofline_pct: float | None = None
    fallback: str | None = None  # harness.fallback_reason: what of the variant's CUDA-only code did not run

    @property
    def status(self) -> str:
        if self.measurement is None:
            return "OOM"
        if not self.measurement.runs_agree:
            return "nondeterministic"
        return "fallback" if self.fallback else "ok"


def by_quantize(variants) -> list[tuple[str | None, list[Variant]]]:
    """The variants grouped by their weights' scheme, in order of first appearance (one model load per group)."""
    groups: dict[str | None, list[Variant]] = {}
    for v in variants:
        groups.setdefault(v.quantize, []).append(v)
    return list(groups.items())


def point_label(w: Workload) -> str:
    return f"b={w.batch} p={w.prompt_len} n={w.new_tokens} cache={w.cache}"


def _counting(runner: harness.Runner, bar) -> harness.Runner:
    """The same runner, advancing a progress bar after each generate call."""
    def generate(ids):
        out = runner(ids)
        bar.update(1)
        return out

    return harness.Runner(runner.variant, generate, runner.tokenizer, runner.device, runner.graph_pool_bytes)


class BenchmarkRun:
    """Runs the plan's variants over its points; results[(variant key, point index)] holds each Result."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.results: dict[tuple[str, int], Result] = {}
        self.ceilings: harness.Ceilings | None = None
        self.timestamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.device_label = harness.device_name(plan.device)
        self._current_variant: Variant | None = None

    # -------------------------------------------------------------------- all points
    def run(self):
        plan = self.plan
        args = plan.args
        # tensor parallel on GPUs: every run is set against the per-rank roofline (each rank reads its shard)
        if plan.mode == "compare" or (plan.tp > 1 and plan.device.type == "cuda"):
            progress.note("measuring the roofline ceilings (matmul rate, copy bandwidth) on this device")
            self.ceilings = harness.measure_ceilings(plan.device, plan.dtype)
        total = len(plan.variants) * len(plan.points)
        with progress.bar(total, "configurations", unit="cfg") as bar:
            for quantize, variants in by_quantize(v for v in plan.variants if v.is_transformers):
                hf = loading.load_hf_model(args.model, plan.device, plan.dtype, seed=args.weights_seed,
                                           quantize=quantize)
                self._sweep(variants, lambda v, w: harness.hf_runner(hf, plan.tokenizer, v, w), bar)
                del hf
                _free_memory(plan.device)
            groups = by_quantize(v for v in plan.variants if not v.is_transformers)
            for i, (quantize, variants) in enumerate(groups):
                if i:  # compiled steps of the previous model may hold its tensors: dropped before the next loads
                    torch._dynamo.reset()
                    _free_memory(plan.device)
                fast = api.load_model(args.model, plan.device, plan.dtype, seed=args.weights_seed,
                                      quantize=quantize, tp=plan.tp)
                # tensor parallel: fast.config is this rank's shard (replicated embedding and head included)
                weights = harness.weight_bytes(fast.config, plan.dtype, quantize=fast.quantize)
                per_rank = f" on rank {plan.rank} of {plan.tp}" if plan.tp > 1 else ""
                progress.note(f"[{args.model}] {fast.quantize or plan.dtype_name} weights loaded{per_rank}: "
                              f"{weights / harness.MB:.1f} MB, peak {fast.load_peak_bytes / harness.MB:.1f} MB "
                              "while loading")
                self._sweep(variants, lambda v, w: harness.fast_runner(fast, v, w), bar)
                del fast
                _free_memory(plan.device)

    def _sweep(self, variants: list[Variant], make_runner: Callable[[Variant, Workload], harness.Runner], bar):
        for v in variants:
            self._current_variant = v
            for i in range(len(self.plan.points)):
                self._run_point(i, lambda w, v=v: make_runner(v, w))
                bar.update(1)

    # -------------------------------------------------------------------- one point
    def _run_point(self, index: int, make_runner: Callable[[Workload], harness.Runner]):
        """Measure (or profile) one variant at one point; an out-of-memory records an OOM row."""
        plan = self.plan
        w = plan.points[index]
        runner = None
        try:
            runner = make_runner(w)
            if plan.mode == "profile":
                trace = self._profile(runner, w)
                progress.note(f"[{runner.variant.key} {point_label(w)}] trace: {trace}")
                return
            m = self._measure(runner, w)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is handled; anything else re-raised
            if not is_oom(e):
                raise
            variant = runner.variant if runner is not None else self._current_variant
            progress.note(f"[{variant.key} {point_label(w)}] out of memory: {str(e).splitlines()[0][:200]}")
            del e
            _free_memory(plan.device)
            result = Result(variant, w, None)
        else:
            result = Result(runner.variant, w, m, fallback=harness.fallback_reason(runner.variant, plan.device))
            progress.note(f"[{m.variant.key} {point_label(w)}] warm-up {m.warmup_s:.2f} s (first run, compile "
                          f"included), {m.tok_per_s:.1f} tok/s" + (f"; fallback: {result.fallback}"
                                                                   if result.fallback else ""))
            if self.ceilings is not None:
                cfg = plan.cfg if plan.tp == 1 else parallel.shard_config(plan.cfg, plan.tp)
                roof = harness.roofline_tok_per_s(cfg, plan.dtype, w, self.ceilings, m.variant.roofline_quantize)
                result.roofline_pct = 100.0 * m.tok_per_s / roof
                if plan.tp > 1:
                    progress.note(f"[{m.variant.key} {point_label(w)}] {result.roofline_pct:.1f} % of the roofline of "
                                  f"{plan.tp} ranks ({roof:.1f} tok/s: each rank reads its shard at "
                                  f"{self.ceilings.copy_bytes / 1e9:.0f} GB/s)")
        self.results[(result.variant.key, index)] = result
        if plan.rank == 0:  # tensor parallel: the ranks ran the same generation, rank 0 records it
            report.append_row(plan.output, report.csv_row(self, result))

    def _measure(self, runner: harness.Runner, w: Workload) -> Measurement:
        a = self.plan.args
        with progress.bar(a.warmup_runs + a.num_runs, f"{runner.variant.key} {point_label(w)}", unit="run",
                          leave=False) as bar:
            return harness.measure(_counting(runner, bar), w, warmup_runs=a.warmup_runs, num_runs=a.num_runs)

    def _profile(self, runner: harness.Runner, w: Workload) -> Path:
        from torch.profiler import ProfilerActivity, profile, tensorboard_trace_handler

        out_dir = Path(self.plan.args.profile_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        ids = w.prompt()
        runner(ids)  # warm-up (compile) outside the trace
        harness.synchronize(runner.device)
        activities = [ProfilerActivity.CPU]
        if runner.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        worker = f"{runner.variant.key}_b{w.batch}_p{w.prompt_len}_n{w.new_tokens}"
        before = set(out_dir.iterdir())
        with profile(activities=activities, record_shapes=True, profile_memory=True, with_stack=True,
                     on_trace_ready=tensorboard_trace_handler(str(out_dir), worker_name=worker)) as prof:
            runner(ids)
            harness.synchronize(runner.device)
        sort = "cuda_time_total" if runner.device.type == "cuda" else "cpu_time_total"
        print(f"\n### profile {runner.variant.key} ({point_label(w)})\n")
        print(prof.key_averages().table(sort_by=sort, row_limit=12))
        new_files = sorted(set(out_dir.iterdir()) - before)
        return new_files[-1] if new_files else out_dir
