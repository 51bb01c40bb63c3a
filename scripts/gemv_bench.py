"""Micro-benchmark: a model's batch-1 decode GEMVs (Llama-7B by default) by F.linear (cuBLAS on a GPU), by
Inductor (a compiled linear, and a compiled multiply-and-sum reduction) and by llama_fast's Triton gemv: time per
call, achieved GB/s and relative error against an fp32 product. Calls are timed in CUDA graphs, weights rotated
over 4 copies so L2 never holds them (as in a real step).

  python scripts/gemv_bench.py
  python scripts/gemv_bench.py --forms linear,triton-gemv
  python scripts/gemv_bench.py --device cpu --shape tiny --forms linear,triton-gemv --reps 1 --calls 1
    (Triton's interpreter on the CPU: checks that the launches build and match, times nothing useful)
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

import torch
import torch.nn.functional as F

from bench_util import decode_gemv_shapes, kernel_device, rotating, time_per_call
from llama_fast.config import NAMED_SHAPES

FORMS = ("linear", "inductor-linear", "inductor-reduce", "triton-gemv")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gemv_bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama-7b", choices=sorted(NAMED_SHAPES), help="model whose GEMVs are timed")
    ap.add_argument("--forms", default=",".join(FORMS), help=f"comma-separated, of: {', '.join(FORMS)}")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: the Triton kernel in Triton's interpreter (a check, not a timing)")
    ap.add_argument("--reps", type=int, default=50, help="timed repetitions (median)")
    ap.add_argument("--calls", type=int, default=10, help="calls per timed repetition (per CUDA graph)")
    args = ap.parse_args(argv)
    args.forms = args.forms.split(",")
    unknown = [f for f in args.forms if f not in FORMS]
    if unknown:
        ap.error(f"--forms: unknown {', '.join(unknown)} (choose from {', '.join(FORMS)})")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA GPU here (--device cpu runs the kernels in Triton's interpreter)")
    if args.reps < 1 or args.calls < 1:
        ap.error("--reps and --calls must be at least 1")
    return args


def form_fn(form: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """y (1, N) = x (1, K) @ w (N, K)^T by the named form."""
    if form == "linear":
        return F.linear
    if form == "inductor-linear":
        return torch.compile(lambda x, w: F.linear(x, w), dynamic=False)
    if form == "inductor-reduce":
        return torch.compile(lambda x, w: (x[:, None, :] * w[None]).sum(-1), dynamic=False)
    from llama_fast.kernels import gemv

    return gemv


def row(name: str, form: str, seconds: float, nbytes: int, err: float | None = None) -> str:
    """One line of the report: time per call, the weight bytes it streamed per second, its error."""
    line = f"{name:5s} {form:16s} {seconds * 1e6:8.1f} us {nbytes / seconds / 1e9:7.0f} GB/s"
    return line if err is None else f"{line} rel err {err:.1e}"


def main(argv=None) -> int:
    args = parse_args(argv)
    dev = kernel_device(args.device)
    torch.manual_seed(0)
    shapes = decode_gemv_shapes(NAMED_SHAPES[args.shape])
    fns = {form: form_fn(form) for form in args.forms}
    total = dict.fromkeys(args.forms, 0.0)
    for name, (N, K) in shapes.items():
        w = rotating(lambda: torch.randn(N, K, device=dev, dtype=torch.float16) * 0.02)
        x = torch.randn(1, K, device=dev, dtype=torch.float16)
        w0 = w()
        ref = F.linear(x.float(), w0.float())
        for form, f in fns.items():
            err = ((f(x, w0).float() - ref).norm() / ref.norm()).item()
            t = time_per_call(lambda: f(x, w()), dev, args.reps, args.calls)
            total[form] += t
            print(row(name, form, t, N * K * 2, err), flush=True)
    wb = sum(N * K * 2 for N, K in shapes.values())
    print("per layer-set totals (one of each shape):")
    for form, t in total.items():
        print("  " + row("", form, t, wb).strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
