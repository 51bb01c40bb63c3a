"""The command line: benchmark one variant, a sweep, the ablation table or the transformers comparison.

Everything is validated (arguments, device, dtype, model name and config, workload lengths, the CSV's
columns) before anything runs or the CSV is touched: a bad argument is one line on stderr and exit 2.
Timing, memory and hashing come from llama_fast.harness only.

Seed semantics: without --preallocate the variant is transformers' own generate ('hf', or 'hf-static'
with --compile other than no); with --preallocate it is llama_fast compiled as --compile says.
"""
from __future__ import annotations

import argparse
import csv
import gc
import io
import os
import sys
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch

from . import api, harness, loading
from .compile import COMPILE_MODES
from .config import ConfigError, LlamaConfig
from .harness import Measurement, Variant, Workload

PROG = "llama-fast"
DEFAULT_MODEL = loading.EMBEDDED_MODEL
DEFAULT_OUTPUT = os.path.join("results", "results_llama.csv")
DEFAULT_BATCH_SIZES = [1]
DEFAULT_PROMPT_LENGTHS = [1000]
SWEEP_BATCH_SIZES = [1, 2, 4, 8]  # --sweep batch without --batch-sizes
SWEEP_PROMPT_LENGTHS = [128, 256, 512, 1000]  # --sweep length without --prompt-lengths
PROFILE_NEW_TOKENS = 8  # --profile: a short run
SAMPLE_CHARS = 200

CSV_COLUMNS = ["timestamp", "commit", "mode", "model", "device", "dtype", "variant", "changes", "compile",
               "batch", "prompt_len", "new_tokens", "cache_length", "tok_per_s", "tok_per_s_best", "max_mem_mb",
               "warmup_s", "roofline_pct", "hash", "status"]


# ------------------------------------------------------------------------------------------- parsing
class _Parser(argparse.ArgumentParser):
    """argparse, but an error is exactly one line on stderr ('llama-fast: error: ...'), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())}\n")


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, ">= 0")


def _int_list(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; empty, non-integer or non-positive items are refused."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(t == "" for t in items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of positive integers, got {text!r}")
    values = []
    for t in items:
        try:
            v = int(t)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{t!r} in {text!r} is not an integer") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"values must be positive integers, got {v} in {text!r}")
        values.append(v)
    return values


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Fast greedy Llama generation: benchmark llama_fast against transformers generate. "
                    "Prints a markdown table and appends one CSV row per configuration.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="model: a checkpoint directory, a .gguf file, a hub id in the local HF cache "
                        "(e.g. huggingface/llama-7b), 'smollm2-135m' (embedded) or 'random:<shape>' "
                        "(seeded random weights, e.g. random:llama-7b, random:tiny) (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto = cuda if available)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default=None,
                   help="weight/compute dtype (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--preallocate", action="store_true",
                   help="run llama_fast (preallocated KV cache, fastest code path); without it: transformers "
                        "generate ('hf', or 'hf-static' when --compile is not 'no')")
    p.add_argument("--compile", choices=list(COMPILE_MODES), default="no",
                   help="torch.compile mode: no | static | dynamic | fullgraph (fullgraph: CUDA graphs over the "
                        "decode step on GPU, compiled fixed-chunk prefill) (default: no)")
    p.add_argument("--profile", action="store_true",
                   help=f"instead of timing, run each configuration once under torch.profiler (1 warm-up, "
                        f"at most {PROFILE_NEW_TOKENS} new tokens) and write TensorBoard traces; no CSV rows")
    p.add_argument("--profile-dir", default="./tb_logs", help="where --profile writes its traces (default: %(default)s)")
    p.add_argument("--sweep", choices=["batch", "length"], default=None,
                   help="sweep batch sizes or prompt lengths (default lists: "
                        f"{','.join(map(str, SWEEP_BATCH_SIZES))} / {','.join(map(str, SWEEP_PROMPT_LENGTHS))}); "
                        "also writes a PNG bar chart llama_sweep_<commit>_<sweep>.png next to the CSV")
    p.add_argument("--batch-sizes", type=_int_list, default=None,
                   help="comma-separated batch sizes, e.g. 1,2,4 (default: 1)")
    p.add_argument("--prompt-lengths", type=_int_list, default=None,
                   help="comma-separated prompt lengths in tokens, e.g. 128,512 (default: 1000)")
    p.add_argument("--new-tokens", type=_positive_int, default=200, help="new tokens generated per run, exactly (default: %(default)s)")
    p.add_argument("--cache-length", type=_positive_int, default=None,
                   help="llama_fast KV cache length, fixed for every point (default: prompt + new tokens of each "
                        "point)")
    p.add_argument("--warmup-runs", type=_non_negative_int, default=1,
                   help="untimed runs first (the first one's time, compile included, is reported as warmup_s) (default: %(default)s)")
    p.add_argument("--num-runs", type=_positive_int, default=3,
                   help="timed runs: tok_per_s from the median, tok_per_s_best from the fastest (default: %(default)s)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="CSV file the rows are appended to (default: %(default)s)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--ablation", action="store_true",
                      help="run every ablation row (transformers, then each llama_fast change) on the same inputs "
                           "and print the table | changes | compile | tok_per_s | max_mem_mb | hash | commit |")
    mode.add_argument("--compare", action="store_true",
                      help=f"llama_fast fastest ('{harness.FASTEST}') vs transformers default ('hf') vs "
                           "transformers static cache ('hf-static'): tok/s, %% of the roofline measured now, "
                           "peak memory, warm-up, hash, ratio to hf-static")
    p.add_argument("--compare-variants", default=None, metavar="KEYS",
                   help="with --compare: the rows, comma-separated variant keys (harness.VARIANTS) that include "
                        "hf-static, e.g. fused,hf-static for a sweep without the slow eager transformers row "
                        f"(default: {harness.FASTEST},hf,hf-static)")
    p.add_argument("--seed", type=int, default=0, help="seed of random:<shape> weights (default: %(default)s)")
    p.add_argument("--prompt", default=None, metavar="TEXT",
                   help="generate from this text (needs a model with a real tokenizer) and print the decoded "
                        "text; replaces the random-token prompt and --prompt-lengths")
    return p


# ------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class TextWorkload(Workload):
    """A workload whose prompt is a tokenized text, repeated over the batch."""
    ids: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def prompt(self) -> torch.Tensor:
        return self.ids.expand(self.batch, -1).clone()


@dataclass
class Plan:
    args: argparse.Namespace
    mode: str  # run | ablation | compare | profile
    device: torch.device
    dtype: torch.dtype
    dtype_name: str
    cfg: LlamaConfig
    tokenizer: Any
    variants: list[Variant]
    points: list[Workload]
    output: Path
    commit: str


def model_config(name: str) -> LlamaConfig:
    """The model's config without loading any weights (refuses unknown names and non-Llama models)."""
    if name.startswith("random:"):
        return loading.random_config(name)
    return loading.read_config(loading.resolve_checkpoint(name), name)


def model_tokenizer(name: str, cfg: LlamaConfig):
    """The tokenizer load_weights would give (so transformers rows hash like llama_fast rows)."""
    if name.startswith("random:"):
        return loading.IdTokenizer(cfg.vocab_size, cfg.eos_token_id[0] if cfg.eos_token_id else None,
                                   cfg.pad_token_id)
    return loading._load_tokenizer(loading.resolve_checkpoint(name))


def _check_output(path: Path):
    if path.exists() and not path.is_file():
        raise ValueError(f"--output {path} exists and is not a file")
    if path.is_file() and path.stat().st_size > 0:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != CSV_COLUMNS:
            raise ValueError(f"--output {path} has other columns than this version writes "
                             f"({','.join(header[:4])},...); choose another file")


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Plan:
    """Every check that can fail before running; each failure is parser.error (one line, exit 2)."""
    try:
        try:
            device = api.resolve_device(args.device)
        except RuntimeError as e:  # torch.device() refusing the string
            raise api.DeviceError(f"unknown device {args.device!r} (use auto, cpu, cuda or cuda:N)") from e
        if device.type not in ("cpu", "cuda"):
            raise api.DeviceError(f"device {args.device!r} is not supported (use auto, cpu, cuda or cuda:N)")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise api.DeviceError(f"device {args.device!r} requested but only {torch.cuda.device_count()} "
                                  "CUDA device(s) exist")
        dtype_name = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
        dtype = loading.parse_dtype(dtype_name)
        api.check_dtype_on_device(dtype, device)
    except (api.DeviceError, RuntimeError, ValueError) as e:
        parser.error(str(e))

    compare_keys = [harness.FASTEST, "hf", "hf-static"]
    if args.compare_variants is not None:
        if not args.compare:
            parser.error("--compare-variants needs --compare")
        compare_keys = [k.strip() for k in args.compare_variants.split(",") if k.strip()]
        unknown = [k for k in compare_keys if k not in harness.VARIANTS]
        if unknown or "hf-static" not in compare_keys or len(set(compare_keys)) != len(compare_keys):
            parser.error(f"--compare-variants {args.compare_variants!r}: give distinct keys of "
                         f"{', '.join(harness.VARIANTS)}, including hf-static (the reference of the ratio)")
    if args.prompt is not None and args.sweep == "length":
        parser.error("--prompt fixes the prompt; it cannot be combined with --sweep length")
    if args.prompt is not None and args.prompt_lengths is not None:
        parser.error("--prompt fixes the prompt length; drop --prompt-lengths")
    if args.prompt is not None and not args.prompt.strip():
        parser.error("--prompt is empty")
    if args.prompt is not None and args.model.startswith("random:"):
        parser.error(f"--prompt needs a real tokenizer; {args.model} has token ids only")

    try:
        cfg = model_config(args.model)
        tokenizer = model_tokenizer(args.model, cfg)
    except (loading.ModelNotFoundError, ConfigError) as e:
        parser.error(str(e))
    except (OSError, ValueError, KeyError) as e:  # unreadable config.json / tokenizer files
        parser.error(f"cannot read model {args.model!r}: {type(e).__name__}: {e}")

    batch_sizes = args.batch_sizes or (SWEEP_BATCH_SIZES if args.sweep == "batch" else DEFAULT_BATCH_SIZES)
    prompt_lengths = args.prompt_lengths or (SWEEP_PROMPT_LENGTHS if args.sweep == "length"
                                             else DEFAULT_PROMPT_LENGTHS)
    text_ids = None
    if args.prompt is not None:
        text_ids = tokenizer(args.prompt, return_tensors="pt").input_ids[:1]
        if text_ids.shape[1] == 0:
            parser.error("--prompt tokenizes to no tokens")
        prompt_lengths = [text_ids.shape[1]]

    new = args.new_tokens
    for T in prompt_lengths:
        total = T + new
        if total > cfg.max_position_embeddings:
            parser.error(f"prompt length {T} + new tokens {new} = {total} exceeds the model's "
                         f"{cfg.max_position_embeddings} positions")
        if args.cache_length is not None and total > args.cache_length:
            parser.error(f"prompt length {T} + new tokens {new} = {total} exceeds --cache-length "
                         f"{args.cache_length}")

    output = Path(args.output)
    if not args.profile:
        try:
            _check_output(output)
        except (OSError, ValueError, csv.Error) as e:
            parser.error(str(e))

    if args.ablation:
        mode, variants = "ablation", [harness.VARIANTS[k] for k in harness.ABLATION]
    elif args.compare:
        mode, variants = "compare", [harness.VARIANTS[k] for k in compare_keys]
    else:
        mode, variants = "run", [harness.variant_for(args.preallocate, args.compile)]
    if args.profile:
        mode = "profile"

    # Points: every prompt length x every batch size (the swept list varies fastest).
    points = []
    outer, inner = (prompt_lengths, batch_sizes) if args.sweep != "length" else (batch_sizes, prompt_lengths)
    for a in outer:
        for b in inner:
            B, T = (b, a) if args.sweep != "length" else (a, b)
            if text_ids is not None:
                points.append(TextWorkload(B, T, new, args.cache_length, ids=text_ids))
            else:
                points.append(Workload(B, T, new, args.cache_length))
    commit = harness.git_commit(cwd=os.path.dirname(os.path.abspath(__file__)))
    return Plan(args, mode, device, dtype, dtype_name, cfg, tokenizer, variants, points, output, commit)


# ------------------------------------------------------------------------------------------- CSV
def append_row(path: Path, row: dict):
    """Append one complete line (with the header when the file is new or empty) in a single os.write
    on an O_APPEND descriptor, under an exclusive lock: a killed run never leaves half a row and two
    concurrent runs never write the header twice."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
    line = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: the single write is still all-or-nothing for one process
            pass
        if os.fstat(fd).st_size == 0:
            line = ",".join(CSV_COLUMNS) + "\n" + line
        data = line.encode()
        written = os.write(fd, data)
        if written != len(data):  # pragma: no cover - a short write on a regular file means the disk is full
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------- running
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

    @property
    def status(self) -> str:
        return "ok" if self.measurement is not None else "OOM"


def _progress(total: int, desc: str, leave: bool = True):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run", file=sys.stderr, leave=leave, dynamic_ncols=True)


def _counting(runner: harness.Runner, bar) -> harness.Runner:
    """The same runner, advancing a progress bar after each generate call."""
    def generate(ids):
        out = runner(ids)
        bar.update(1)
        return out

    return harness.Runner(runner.variant, generate, runner.tokenizer, runner.device, runner.graph_pool_bytes)


def _point_label(w: Workload) -> str:
    return f"b={w.batch} p={w.prompt_len} n={w.new_tokens} cache={w.cache}"


class Session:
    """Runs the plan's variants over its points: transformers rows first (one model load), then every
    llama_fast row on one LlamaFast (configured per row)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.results: dict[tuple[str, int], Result] = {}
        self.ceilings = None
        self.timestamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.device_label = harness.device_name(plan.device)
        self._current_variant: Variant | None = None

    # -------------------------------------------------------------------- one point
    def _measure(self, runner: harness.Runner, w: Workload) -> Measurement:
        a = self.plan.args
        bar = _progress(a.warmup_runs + a.num_runs, f"{runner.variant.key} {_point_label(w)}", leave=False)
        try:
            return harness.measure(_counting(runner, bar), w, warmup_runs=a.warmup_runs, num_runs=a.num_runs)
        finally:
            bar.close()

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
        print(f"\n### profile {runner.variant.key} ({_point_label(w)})\n")
        print(prof.key_averages().table(sort_by=sort, row_limit=12))
        new_files = sorted(set(out_dir.iterdir()) - before)
        return new_files[-1] if new_files else out_dir

    def _run_point(self, index: int, make_runner):
        """Measure (or profile) one variant at one point; an out-of-memory records an OOM row."""
        plan = self.plan
        w = plan.points[index]
        if plan.mode == "profile":
            w = replace(w, new_tokens=min(w.new_tokens, PROFILE_NEW_TOKENS), cache_length=w.cache)
        runner = None
        try:
            runner = make_runner(w)
            if plan.mode == "profile":
                trace = self._profile(runner, w)
                _note(f"[{runner.variant.key} {_point_label(w)}] trace: {trace}")
                return
            m = self._measure(runner, w)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is handled; anything else re-raised
            if not is_oom(e):
                raise
            variant = runner.variant if runner is not None else self._current_variant
            _note(f"[{variant.key} {_point_label(w)}] out of memory: {str(e).splitlines()[0][:200]}")
            del e
            _free_memory(plan.device)
            result = Result(variant, w, None)
        else:
            result = Result(runner.variant, w, m)
            _note(f"[{m.variant.key} {_point_label(w)}] warm-up {m.warmup_s:.2f} s (first run, compile included), "
                  f"{m.tok_per_s:.1f} tok/s")
            if self.ceilings is not None:
                roof = harness.roofline_tok_per_s(plan.cfg, plan.dtype, w, self.ceilings)
                result.roofline_pct = 100.0 * m.tok_per_s / roof
        self.results[(result.variant.key, index)] = result
        if plan.mode != "profile":
            append_row(plan.output, self._row(result))

    def _row(self, r: Result) -> dict:
        p, m, w = self.plan, r.measurement, r.workload
        row = dict(timestamp=self.timestamp, commit=p.commit, mode=p.mode, model=p.args.model,
                   device=self.device_label, dtype=p.dtype_name, variant=r.variant.key, changes=r.variant.label,
                   compile=r.variant.compile, batch=w.batch, prompt_len=w.prompt_len, new_tokens=w.new_tokens,
                   cache_length=w.cache, status=r.status)
        if m is not None:
            row.update(tok_per_s=f"{m.tok_per_s:.3f}", tok_per_s_best=f"{m.tok_per_s_best:.3f}",
                       max_mem_mb=f"{m.max_mem_mb:.1f}", warmup_s=f"{m.warmup_s:.3f}", hash=m.hash)
            if r.roofline_pct is not None:
                row["roofline_pct"] = f"{r.roofline_pct:.1f}"
        return row

    # -------------------------------------------------------------------- all points
    def _sweep(self, variants: list[Variant], make_runner, bar):
        for v in variants:
            self._current_variant = v
            for i in range(len(self.plan.points)):
                self._run_point(i, lambda w, v=v: make_runner(v, w))
                bar.update(1)

    def run(self):
        plan = self.plan
        hf_variants = [v for v in plan.variants if v.is_transformers]
        fast_variants = [v for v in plan.variants if not v.is_transformers]
        if plan.mode == "compare":
            _note("measuring the roofline ceilings (matmul rate, copy bandwidth) on this device")
            self.ceilings = harness.measure_ceilings(plan.device, plan.dtype)
        total = len(plan.variants) * len(plan.points)
        from tqdm import tqdm

        with tqdm(total=total, desc="configurations", unit="cfg", file=sys.stderr, dynamic_ncols=True) as bar:
            if hf_variants:
                hf = loading.load_hf_model(plan.args.model, plan.device, plan.dtype, seed=plan.args.seed)
                self._sweep(hf_variants, lambda v, w: harness.hf_runner(hf, plan.tokenizer, v, w), bar)
                del hf
                _free_memory(plan.device)
            if fast_variants:
                fast = api.load_model(plan.args.model, plan.device, plan.dtype, seed=plan.args.seed)
                self._sweep(fast_variants, lambda v, w: harness.fast_runner(fast, v, w), bar)
                del fast
                _free_memory(plan.device)


def _note(text: str):
    """A progress line on stderr that does not break the tqdm bars."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


# ------------------------------------------------------------------------------------------- reports
def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def header_line(plan: Plan, w: Workload) -> str:
    return (f"model {plan.args.model} | batch {w.batch} | prompt {w.prompt_len} | new tokens {w.new_tokens} | "
            f"cache length {w.cache} | {plan.dtype_name} | {harness.device_name(plan.device)}")


def report(session: Session) -> str:
    plan = session.plan
    out = []
    for i, w in enumerate(plan.points):
        out.append(header_line(plan, w))
        out.append("")
        if plan.mode == "ablation":
            rows = []
            for v in plan.variants:
                r = session.results[(v.key, i)]
                m = r.measurement
                rows.append([v.label, v.compile, _fmt(m.tok_per_s) if m else "OOM", _fmt(m.max_mem_mb) if m else "-",
                             m.hash if m else "-", plan.commit])
            out.append(_table(["changes", "compile", "tok_per_s", "max_mem_mb", "hash", "commit"], rows))
        elif plan.mode == "compare":
            ref = session.results[("hf-static", i)].measurement
            roof = harness.roofline_tok_per_s(plan.cfg, plan.dtype, w, session.ceilings)
            c = session.ceilings
            out.append(f"roofline {roof:.1f} tok/s (measured now: matmul {c.matmul_flops / 1e12:.2f} TFLOP/s, "
                       f"copy {c.copy_bytes / 1e9:.1f} GB/s)")
            out.append("")
            names = {k: f"llama_fast ({k})" for k in harness.VARIANTS}
            names.update({harness.FASTEST: "llama_fast (fastest)", "hf": "transformers default",
                          "hf-static": "transformers static cache"})
            rows = []
            for v in plan.variants:
                r = session.results[(v.key, i)]
                m = r.measurement
                if m is None:
                    rows.append([names[v.key], v.key, "OOM", "-", "-", "-", "-", "-", "-"])
                    continue
                ratio = f"{m.tok_per_s / ref.tok_per_s:.2f}x" if ref is not None else "-"
                rows.append([names[v.key], v.key, _fmt(m.tok_per_s), _fmt(m.tok_per_s_best), _fmt(r.roofline_pct),
                             _fmt(m.max_mem_mb), _fmt(m.warmup_s, 2), m.hash, ratio])
            out.append(_table(["implementation", "variant", "tok_per_s", "tok_per_s_best", "% roofline",
                               "max_mem_mb", "warmup_s", "hash", "vs hf-static"], rows))
        else:
            rows = []
            for v in plan.variants:
                r = session.results[(v.key, i)]
                m = r.measurement
                rows.append([v.key, v.label, v.compile, _fmt(m.tok_per_s) if m else "OOM",
                             _fmt(m.tok_per_s_best) if m else "-", _fmt(m.max_mem_mb) if m else "-",
                             _fmt(m.warmup_s, 2) if m else "-", m.hash if m else "-", r.status])
            out.append(_table(["variant", "changes", "compile", "tok_per_s", "tok_per_s_best", "max_mem_mb",
                               "warmup_s", "hash", "status"], rows))
        out.append("")
    return "\n".join(out)


def sample_text(session: Session) -> str | None:
    """The decoded first row of the last successful run: the whole text for --prompt, else its last
    SAMPLE_CHARS characters."""
    last = [r for r in session.results.values() if r.measurement is not None]
    if not last:
        return None
    m = last[-1].measurement
    tok = session.plan.tokenizer
    text = tok.decode(m.output_ids[0], skip_special_tokens=True)
    if session.plan.args.prompt is not None:
        return f"generated text ({m.variant.key}, first row):\n{text}"
    tail = text[-SAMPLE_CHARS:]
    return f"sample output ({m.variant.key}, first row, last {len(tail)} chars):\n...{tail}"


def sweep_chart(session: Session) -> Path:
    """Grouped bars: tok/s per variant at each sweep point (OOM points marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = session.plan
    xs = [f"b={w.batch}" if plan.args.sweep == "batch" else f"p={w.prompt_len}" for w in plan.points]
    if len({(w.batch, w.prompt_len) for w in plan.points}) != len(set(xs)):  # several of the other dimension
        xs = [f"b={w.batch} p={w.prompt_len}" for w in plan.points]
    n = len(plan.variants)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(xs) * max(1, n / 3)), 4.5))
    for j, v in enumerate(plan.variants):
        heights, ooms = [], []
        for i in range(len(plan.points)):
            m = session.results[(v.key, i)].measurement
            heights.append(m.tok_per_s if m else 0.0)
            ooms.append(m is None)
        pos = [i + (j - (n - 1) / 2) * width for i in range(len(xs))]
        ax.bar(pos, heights, width, label=v.key)
        for x, oom in zip(pos, ooms):
            if oom:
                ax.text(x, 0, "OOM", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(xs)), xs)
    ax.set_ylabel("tok/s (median)")
    ax.set_title(f"{plan.args.model} {plan.dtype_name} on {session.device_label} ({plan.commit})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = plan.output.parent / f"llama_sweep_{plan.commit}_{plan.args.sweep}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `llama-fast` and run_llama.py. 0 = done (OOM points included), 2 = bad arguments;
    any other error propagates (traceback, exit 1)."""
    from .api import limit_cublas_workspace

    limit_cublas_workspace()  # before anything touches cuBLAS
    parser = build_parser()
    args = parser.parse_args(argv)
    plan = validate(parser, args)
    session = Session(plan)
    session.run()
    if plan.mode == "profile":
        print(f"traces written to {Path(plan.args.profile_dir).resolve()} (tensorboard --logdir "
              f"{plan.args.profile_dir})")
        return 0
    print(report(session))
    sample = sample_text(session)
    if sample is not None:
        print(sample)
    if plan.args.sweep:
        print(f"\nchart: {sweep_chart(session)}")
    print(f"rows appended to {plan.output}")
    return 0
