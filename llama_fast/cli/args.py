"""The command line's arguments and every check made before anything runs.

build_parser() defines the flags; validate() turns parsed arguments into a Plan (device, dtype, model config
and tokenizer, the variants and the workload points) or stops with one line on stderr
('llama-fast: error: ...') and exit 2, before any model runs or the CSV is touched.

Seed semantics: without --preallocate the variant is transformers' own generate ('hf', or 'hf-static'
with --compile other than no); with --preallocate it is llama_fast compiled as --compile says.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import api, harness, loading, parallel, quant
from ..compile import COMPILE_MODES
from ..config import ConfigError, LlamaConfig
from ..harness import Variant, Workload
from ..sampling import Sampling, SamplingError
from . import report

PROG = "llama-fast"
DEFAULT_MODEL = loading.EMBEDDED_MODEL
DEFAULT_OUTPUT = os.path.join("results", "results_llama.csv")
DEFAULT_BATCH_SIZES = [1]
DEFAULT_PROMPT_LENGTHS = [1000]
SWEEP_BATCH_SIZES = [1, 2, 4, 8]  # --sweep batch without --batch-sizes
SWEEP_PROMPT_LENGTHS = [128, 256, 512, 1000]  # --sweep length without --prompt-lengths
PROFILE_NEW_TOKENS = 8  # --profile: a short run


# ------------------------------------------------------------------------------------------- parsing
class _Parser(argparse.ArgumentParser):
    """argparse, but an error is exactly one line on stderr ('llama-fast: error: ...'), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {' '.join(str(message).split())}\n")


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


def _dtype(text: str) -> torch.dtype:
    """A dtype name of loading.DTYPE_NAMES, the same names load_model(dtype=...) accepts."""
    try:
        return loading.parse_dtype(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _scheme(text: str) -> str:
    """A quantization scheme of llama_fast.quant, the names load_model(quantize=...) accepts -> its canonical
    name ('int4' -> 'int4:g128')."""
    try:
        return quant.parse_scheme(text).name
    except quant.QuantError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


QUANTIZE_HELP = (f"weight-only quantization: {quant.SCHEME_CHOICES} (int8: one scale per output channel; int4: a "
                 "scale and an offset per group of 128, 64 or 32 weights along K, int4 = int4:g128); each linear "
                 "weight is quantized as it is loaded (round-to-nearest)")


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
    p.add_argument("--dtype", type=_dtype, default=None, metavar="NAME",
                   help=f"weight/compute dtype: {loading.DTYPE_CHOICES} (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads torch uses (torch.set_num_threads), set before anything runs; on a small "
                        "CPU shared with other work, fewer threads than cores keep the timings steady "
                        "(default: torch's own choice)")
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
                        "also writes a PNG bar chart llama_sweep_<commit>_<sweep>.png next to the CSV "
                        "(_2, _3, ... when that name is taken: an earlier chart is never overwritten)")
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
    p.add_argument("--output", default=DEFAULT_OUTPUT,
                   help="CSV file the rows are appended to; a row's status is ok, OOM or fallback "
                        "(default: %(default)s)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--ablation", action="store_true",
                      help="run every ablation row (transformers, then each llama_fast change) on the same inputs "
                           "and print the table | changes | compile | tok_per_s | max_mem_mb | hash | commit |; "
                           "off CUDA, rows of CUDA-only code (CUDA graphs, Triton kernels, PDL) run its fallback "
                           "and are marked '(fallback)' (CSV status fallback)")
    mode.add_argument("--compare", action="store_true",
                      help=f"llama_fast fastest ('{harness.FASTEST}') vs transformers default ('hf') vs "
                           "transformers static cache ('hf-static'): tok/s, %% of the roofline measured now, "
                           "peak memory, warm-up, hash, ratio to hf-static")
    p.add_argument("--compare-variants", default=None, metavar="KEYS",
                   help="with --compare: the rows, comma-separated variant keys (harness.VARIANTS) that include "
                        "hf-static, e.g. fused,hf-static for a sweep without the slow eager transformers row "
                        f"(default: {harness.FASTEST},hf,hf-static)")
    p.add_argument("--weights-seed", type=_non_negative_int, default=0,
                   help="seed of random:<shape> weights (default: %(default)s)")
    p.add_argument("--sample", action="store_true",
                   help="sample instead of the greedy pick (temperature, then top-k, then top-p, as transformers); "
                        "seeded, so every timed run draws the same tokens and the hash is stable")
    p.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="with --sample: softmax temperature, > 0 (default: 1.0)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="with --sample: keep the K most likely tokens")
    p.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="with --sample: keep the smallest set of tokens whose probability reaches P, in (0, 1]")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="with --sample: the draw's seed (default: 0)")
    p.add_argument("--quantize", type=_scheme, default=None, metavar="SCHEME",
                   help=f"{QUANTIZE_HELP}. For runs and --compare: the llama_fast rows run the quantized weights "
                        "and the transformers rows the same weights dequantized (the same numbers in float); "
                        "recorded in the CSV's quantize column. A quantized checkpoint (llama-fast quantize) "
                        "given as --model runs its own scheme. --ablation has its own int8 and int4 rows "
                        "(default: none, the weights in --dtype)")
    p.add_argument("--tp", type=_positive_int, default=1, metavar="N",
                   help="tensor parallelism over N processes, launched by torchrun --nproc-per-node N (gloo on "
                        "CPU, nccl on GPUs, one GPU per rank): each rank loads only its shard of the weights; N "
                        "must divide the attention heads and the intermediate size; with --preallocate only; "
                        "quantized weights shard too (int4: each rank's K of wo and w2 a multiple of the group); "
                        "the output head is replicated, or vocabulary-parallel with LLAMA_FAST_TP_HEAD=vocab; "
                        "the decode step's all-reduces one-shot over symmetric GPU memory where the GPUs of one "
                        "host allow it (LLAMA_FAST_TP_ALLREDUCE=auto, the default; nccl, symm or fused to choose); "
                        "rank 0 prints and writes the CSV (default: 1)")
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
    """What a run does, fully checked: its variants over its workload points, in this order."""
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
    quantize: str | None = None  # the weights' scheme of the run (--quantize or a quantized checkpoint's)
    tp: int = 1  # tensor-parallel degree (--tp)
    rank: int = 0  # this process's rank among the tp ones (only rank 0 prints and writes rows)


def model_config(name: str) -> LlamaConfig:
    """The model's config without loading any weights (refuses unknown names and non-Llama models)."""
    if name.startswith("random:"):
        return loading.random_config(name)
    return loading.read_config(loading.resolve_checkpoint(name), name)


def _device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    try:
        device = api.resolve_device(args.device)
    except RuntimeError as e:  # torch.device() refusing the string
        raise api.DeviceError(f"unknown device {args.device!r} (use auto, cpu, cuda or cuda:N)") from e
    if device.type not in ("cpu", "cuda"):
        raise api.DeviceError(f"device {args.device!r} is not supported (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise api.DeviceError(f"device {args.device!r} requested but only {torch.cuda.device_count()} "
                              "CUDA device(s) exist")
    dtype = args.dtype if args.dtype is not None else loading.parse_dtype("fp16" if device.type == "cuda" else "fp32")
    api.check_dtype_on_device(dtype, device)
    return device, dtype


def _compare_keys(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    if args.compare_variants is None:
        return [harness.FASTEST, "hf", "hf-static"]
    if not args.compare:
        parser.error("--compare-variants needs --compare")
    keys = [k.strip() for k in args.compare_variants.split(",") if k.strip()]
    unknown = [k for k in keys if k not in harness.VARIANTS]
    if unknown or "hf-static" not in keys or len(set(keys)) != len(keys):
        parser.error(f"--compare-variants {args.compare_variants!r}: give distinct keys of "
                     f"{', '.join(harness.VARIANTS)}, including hf-static (the reference of the ratio)")
    return keys


def _check_prompt_flags(parser: argparse.ArgumentParser, args: argparse.Namespace):
    if args.prompt is None:
        return
    if args.sweep == "length":
        parser.error("--prompt fixes the prompt; it cannot be combined with --sweep length")
    if args.prompt_lengths is not None:
        parser.error("--prompt fixes the prompt length; drop --prompt-lengths")
    if not args.prompt.strip():
        parser.error("--prompt is empty")
    if args.model.startswith("random:"):
        parser.error(f"--prompt needs a real tokenizer; {args.model} has token ids only")


def _sampling(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Sampling | None:
    """The Sampling of --sample and its parameters (each refused without --sample, or out of range)."""
    given = [f for f, v in (("--temperature", args.temperature), ("--top-k", args.top_k), ("--top-p", args.top_p),
                            ("--seed", args.seed)) if v is not None]
    if not args.sample:
        if given:
            parser.error(f"{', '.join(given)} needs --sample (without it the pick is greedy)")
        return None
    try:
        return Sampling(args.temperature if args.temperature is not None else 1.0, args.top_k, args.top_p,
                        args.seed if args.seed is not None else 0)
    except SamplingError as e:
        parser.error(str(e))


def _points(args: argparse.Namespace, batch_sizes: list[int], prompt_lengths: list[int],
            text_ids: torch.Tensor | None, sampling: Sampling | None) -> list[Workload]:
    """Every prompt length x every batch size (the swept list varies fastest); --profile runs are short."""
    points = []
    sweep_length = args.sweep == "length"
    outer, inner = (batch_sizes, prompt_lengths) if sweep_length else (prompt_lengths, batch_sizes)
    for a in outer:
        for b in inner:
            B, T = (a, b) if sweep_length else (b, a)
            if text_ids is not None:
                w = TextWorkload(B, T, args.new_tokens, args.cache_length, sampling, ids=text_ids)
            else:
                w = Workload(B, T, args.new_tokens, args.cache_length, sampling)
            if args.profile:
                w = replace(w, new_tokens=min(w.new_tokens, PROFILE_NEW_TOKENS), cache_length=w.cache)
            points.append(w)
    return points


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Plan:
    """Every check that can fail before running; each failure is parser.error (one line, exit 2)."""
    try:
        device, dtype = _device_and_dtype(args)
    except (api.DeviceError, RuntimeError, ValueError) as e:
        parser.error(str(e))
    compare_keys = _compare_keys(parser, args)
    _check_prompt_flags(parser, args)
    sampling = _sampling(parser, args)

    try:
        cfg = model_config(args.model)
        tokenizer = loading.load_tokenizer(args.model)
        quantize = loading.quantization_of(args.model)  # a quantized checkpoint's scheme
    except (loading.ModelNotFoundError, ConfigError, quant.QuantError) as e:
        parser.error(str(e))
    except (OSError, ValueError, KeyError) as e:  # unreadable config.json / tokenizer files
        parser.error(f"cannot read model {args.model!r}: {type(e).__name__}: {e}")
    quantize = _quantize(parser, args, quantize)

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
            report.check_csv(output)
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
    if quantize is not None:  # rows with a scheme of their own (the ablation's int8 / int4) keep it
        variants = [v if v.quantize is not None else replace(v, quantize=quantize) for v in variants]

    points = _points(args, batch_sizes, prompt_lengths, text_ids, sampling)
    device, rank = _tensor_parallel(parser, args, cfg, device, quantize)
    commit = harness.git_commit(cwd=os.path.dirname(os.path.abspath(__file__)))
    return Plan(args, mode, device, dtype, loading.dtype_name(dtype), cfg, tokenizer, variants, points, output,
                commit, quantize, args.tp, rank)


def _tensor_parallel(parser: argparse.ArgumentParser, args: argparse.Namespace, cfg: LlamaConfig,
                     device: torch.device, quantize: str | None) -> tuple[torch.device, int]:
    """(this rank's device, its rank) for --tp: checked identically on every rank before the process group is
    joined, so a bad --tp stops every rank with the same line and none waits for the others. A rank other than
    0 prints nothing on stdout: rank 0 reports for all."""
    if args.tp == 1:
        return device, 0
    if not args.preallocate or args.ablation or args.compare:
        parser.error(f"--tp {args.tp} runs llama_fast only: give --preallocate, without --ablation or --compare "
                     "(transformers rows do not run tensor parallel)")
    try:
        # LLAMA_FAST_TP_HEAD and LLAMA_FAST_TP_ALLREDUCE checked too
        parallel.check_plan(cfg, args.tp, device, schemes=loading.tp_layer_schemes(args.model, quantize))
        device = parallel.rank_device(device)
        rank, _ = parallel.init_from_env(args.tp, device)
    except parallel.ParallelError as e:
        parser.error(f"--tp {args.tp}: {e}" if not str(e).startswith("tp ") else f"--{e}")
    except (RuntimeError, ValueError) as e:  # the rendezvous itself failing (address in use, timeout)
        parser.error(f"--tp {args.tp}: cannot join the process group: {' '.join(str(e).split())[:300]}")
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of this process
    return device, rank


def _quantize(parser: argparse.ArgumentParser, args: argparse.Namespace, saved: str | None) -> str | None:
    """The run's weight scheme: --quantize, or the scheme a quantized checkpoint was saved with (then --quantize
    may only repeat it); refused with --ablation, whose rows choose their own weights."""
    if saved is not None and args.quantize not in (None, saved):
        parser.error(f"--model {args.model} holds {saved} weights; --quantize {args.quantize} cannot re-quantize "
                     "them (drop --quantize, or give the full-precision model)")
    quantize = args.quantize or saved
    if quantize is not None and args.ablation:
        what = f"--model {args.model} holds {saved} weights" if saved else "--quantize does not apply to --ablation"
        parser.error(f"{what}: the ablation runs full-precision weights and has its own int8 and int4 rows")
    return quantize
