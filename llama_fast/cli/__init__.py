"""The command line (`llama-fast`, `python run_llama.py`, `python -m llama_fast.cli`): benchmark one variant, a
sweep, the ablation table or the transformers comparison; `llama-fast quantize SRC DST --quantize SCHEME` saves
a quantized checkpoint (cli.quantize).

main() parses (args.build_parser), checks everything before anything runs (args.validate -> Plan: a bad
argument is one line on stderr and exit 2, the CSV untouched), runs the plan (runner.BenchmarkRun, each point's
CSV row appended as it finishes) and prints the report (report). Timing, memory and hashing come from
llama_fast.harness only; progress goes to stderr through llama_fast.progress.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import sys

import torch

from .. import parallel
from ..api import limit_cublas_workspace
from . import quantize, report
from .args import build_parser, validate
from .runner import BenchmarkRun


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `llama-fast` and run_llama.py. 0 = done (OOM points included), 2 = bad arguments;
    any other error propagates (traceback, exit 1). A first argument 'quantize' runs that subcommand."""
    limit_cublas_workspace()  # before anything touches cuBLAS
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [quantize.COMMAND]:
        return quantize.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:  # before validate: a first-use model conversion already runs on these threads
        torch.set_num_threads(args.threads)
    plan = validate(parser, args)
    run = BenchmarkRun(plan)
    run.run()
    parallel.meet_before_exit()  # tensor parallel over gloo: every rank done before any tears the group down
    if plan.mode == "profile":
        print(f"traces written to {Path(args.profile_dir).resolve()} (tensorboard --logdir {args.profile_dir})")
        return 0
    print(report.tables(run))
    sample = report.sample_text(run)
    if sample is not None:
        print(sample)
    if args.sweep:
        print(f"\nchart: {report.sweep_chart(run)}")
    print(f"rows appended to {plan.output}")
    return 0
