"""Micro-benchmark: a model's batch-1 decode GEMVs (Llama-7B by default) by F.linear (cuBLAS on a GPU), by
Inductor (a compiled linear, and a compiled multiply-and-sum reduction) and by llama_fast's Triton gemv: time per
call, achieved GB/s and relative error against an fp32 product. Calls are timed in CUDA graphs, weights rotated
over 4 copies so L2 never holds them (as in a real step).

  python scripts/gemv_bench.py
  python scripts/gemv_bench.py --forms linear,triton-gemv
  python scripts/gemv_bench.py --device cpu --shape tiny --forms linear,triton-gemv --reps 1 --calls 1
    (Triton's interpreter on the CPU: checks that the launches build and match, times nothing useful)
  python scripts/gemv_bench.py --gemm 2,4,8,16,32,64 [--gemm-sweep] [--weights fp16,int8,int4]
    (batch 2-64: F.linear against the small-M GEMM, plain and in the form the fused-gemm step runs it; with
    --gemm-sweep also that form over GEMM_GRID, the best configs and the pinned one; with --weights int8 / int4
    (llama_fast.quant schemes) also over quantized weights, against F.linear of fp16 weights and QuantLinear's
    dequantize-then-F.linear, GB/s counting the bytes read: qweight + scales (+ offsets))
"""
from __future__ import annotations

import argparse
import itertools
import sys
from typing import Callable

import torch
import torch.nn.functional as F

from bench_util import decode_gemv_shapes, kernel_device, rotating, time_per_call
from llama_fast import quant
from llama_fast.config import NAMED_SHAPES

FORMS = ("linear", "inductor-linear", "inductor-reduce", "triton-gemv")
# the small-M GEMM's form in the fused-gemm step (model.Block._small_m_forward; the head through model.linear)
GEMM_STEP_FORMS = {"wqkv": "rmsnorm", "wo": "residual", "w13": "rmsnorm-swiglu", "w2": "residual", "head": "gemm"}
# (BLOCK_N, BLOCK_K, num_warps, num_stages, PER_SM) of --gemm-sweep: the tiles at one program per SM, then a
# deeper K split (2-8 programs per SM, gemm.PER_SM) at the tiles that leave it room
GEMM_GRID = [(*c, 1) for c in itertools.product((32, 64, 128), (64, 128, 256), (4, 8), (2, 3, 4))] + \
    [(bn, 128, 4, stages, per_sm) for bn in (32, 64) for stages in (3, 4) for per_sm in (2, 4, 8)]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gemv_bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama-7b", choices=sorted(NAMED_SHAPES), help="model whose GEMVs are timed")
    ap.add_argument("--forms", default=",".join(FORMS), help=f"comma-separated, of: {', '.join(FORMS)}")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: the Triton kernel in Triton's interpreter (a check, not a timing)")
    ap.add_argument("--reps", type=int, default=50, help="timed repetitions (median)")
    ap.add_argument("--calls", type=int, default=10, help="calls per timed repetition (per CUDA graph)")
    ap.add_argument("--gemm", default=None, metavar="ROWS",
                    help="comma-separated row counts (2..64): time the small-M GEMM against F.linear instead")
    ap.add_argument("--gemm-sweep", action="store_true", help="with --gemm: also sweep each step form's configs")
    ap.add_argument("--weights", default="fp16", metavar="KINDS",
                    help=f"with --gemm: comma-separated weight kinds, fp16 or a scheme of {quant.SCHEME_CHOICES} "
                         "(default: fp16)")
    args = ap.parse_args(argv)
    args.weights = args.weights.split(",")
    for kind in args.weights:
        if kind != "fp16":
            try:
                quant.parse_scheme(kind)
            except quant.QuantError as e:
                ap.error(f"--weights: {e}")
    if args.gemm is None and args.weights != ["fp16"]:
        ap.error("--weights needs --gemm")
    if args.gemm is not None:
        try:
            args.gemm = [int(m) for m in args.gemm.split(",")]
        except ValueError:
            ap.error(f"--gemm: comma-separated integers, got {args.gemm!r}")
        if not all(2 <= m <= 64 for m in args.gemm):
            ap.error("--gemm: row counts from 2 to 64")
    elif args.gemm_sweep:
        ap.error("--gemm-sweep needs --gemm")
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


def gemm_fn(form: str, M: int, N: int, K: int, dev) -> Callable[..., torch.Tensor]:
    """y = the small-M GEMM of x (M, K) and w (N, K) in the named form: rmsnorm with the prologue, residual with
    a residual added, rmsnorm-swiglu with both of w = [gate; up] (its extra inputs made here, not per call).
    Quantized w: its scales / offsets / group as keyword arguments."""
    from llama_fast.kernels import small_m_gemm, small_m_gemm_residual, small_m_gemm_swiglu

    g, rstd = torch.ones(K, device=dev, dtype=torch.float16), torch.ones(M, device=dev)
    res = torch.zeros(M, N, device=dev, dtype=torch.float16)
    return {"gemm": small_m_gemm, "rmsnorm": lambda x, w, **q: small_m_gemm(x, w, rstd, g, **q),
            "residual": lambda x, w, **q: small_m_gemm_residual(x, w, res, **q),
            "rmsnorm-swiglu": lambda x, w, **q: small_m_gemm_swiglu(x, w, rstd, g, **q)}[form]


def weight_maker(kind: str, N: int, K: int, dev) -> tuple[Callable[[], tuple], str]:
    """(a function making a random (N, K) weight of the kind as (w, op keyword arguments, its fp16 twin), the
    scheme it got: int4 falls back to a smaller group where K asks for it, quant.QuantScheme.for_in_features)."""
    scheme = None if kind == "fp16" else quant.parse_scheme(kind).for_in_features(K)

    def make():
        w = torch.randn(N, K, device=dev, dtype=torch.float16) * 0.02
        if scheme is None:
            return w, {}, w
        t = quant.quantize_tensor(w, scheme)
        q = {"scales": t["scales"]}
        if scheme.bits == 4:
            q.update(offsets=t["offsets"], group=scheme.group)
        return t["qweight"], q, w
    return make, "fp16" if scheme is None else scheme.name


def dequantized(w: torch.Tensor, q: dict) -> torch.Tensor:
    """The model-dtype weight of a quantized one (QuantLinear.dequantize)."""
    if "offsets" in q:
        return quant.dequantize_int4(w, q["scales"], q["offsets"])
    return quant.dequantize_int8(w, q["scales"])


def gemm_main(args, dev, shapes) -> int:
    """--gemm: at each row count and weight kind, F.linear (cuBLAS) against the small-M GEMM, plain and in its
    step form; quantized kinds also against QuantLinear's dequantize-then-F.linear."""
    import triton

    from llama_fast.kernels import gemm as gm

    for kind in args.weights:
        for M in args.gemm:
            total, wb = {}, 0
            for name, (N, K) in shapes.items():
                make, got = weight_maker(kind, N, K, dev)
                w = rotating(make)
                x = torch.randn(M, K, device=dev, dtype=torch.float16)
                w0, q0, dense0 = w()
                nbytes = w0.nbytes + sum(t.nbytes for t in q0.values() if isinstance(t, torch.Tensor))
                wb += nbytes
                ref = F.linear(x.float(), (dequantized(w0, q0) if q0 else w0).float())
                step = GEMM_STEP_FORMS[name]
                forms = ("linear",) + (("dequant-linear",) if q0 else ()) + ("gemm",) + \
                    ((step,) if step != "gemm" else ())
                tag = "" if kind == "fp16" else f" {got}"
                for form in forms:
                    if form == "linear":  # the fp16 weight, whatever the kind: the speed to beat
                        f, call = F.linear, (lambda: f(x, w()[2]))
                        err = ((f(x, dense0).float() - ref).norm() / ref.norm()).item() if not q0 else None
                        nb = dense0.nbytes
                    elif form == "dequant-linear":
                        def f(x, wq, **q):
                            return F.linear(x, dequantized(wq, q))
                        call = (lambda: (lambda wq, q, _: f(x, wq, **q))(*w()))
                        err, nb = None, nbytes
                    else:
                        f = gemm_fn(form, M, N, K, dev)
                        call = (lambda: (lambda wq, q, _: f(x, wq, **q))(*w()))
                        err = ((f(x, w0, **q0).float() - ref).norm() / ref.norm()).item() if form == "gemm" else None
                        nb = nbytes
                    t = time_per_call(call, dev, args.reps, args.calls)
                    for key in {form, "step" if form == step else form}:
                        total[key] = total.get(key, 0.0) + t
                    label = f"{form} fp16" if form == "linear" and tag else form + tag
                    print(row(name, f"M={M} {label}", t, nb, err), flush=True)
                if args.gemm_sweep:
                    wfmt = gm.WFMT_DENSE if not q0 else gm.WFMT_INT4 if "offsets" in q0 else gm.WFMT_INT8
                    table, key = gm.config_key(M, step.endswith("swiglu"), wfmt, step.startswith("rmsnorm"))
                    pinned, times = table[key], []
                    f = gemm_fn(step, M, N, K, dev)
                    for bn, bk, warps, stages, per_sm in GEMM_GRID:
                        table[key] = {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages,
                                      "PER_SM": per_sm}
                        try:
                            times.append((time_per_call(lambda: (lambda wq, q, _: f(x, wq, **q))(*w()), dev,
                                                        args.reps, args.calls), bn, bk, warps, stages, per_sm))
                        except triton.runtime.errors.OutOfResources:  # more shared memory than the GPU has
                            continue
                        finally:
                            table[key] = pinned
                    for t, bn, bk, warps, stages, per_sm in sorted(times)[:3]:
                        print("  " + row(name, f"M={M} {step}{tag}", t, nbytes).strip()
                              + f"  BN{bn} BK{bk} warps {warps} stages {stages} per SM {per_sm}", flush=True)
                    print(f"  pinned: BN{pinned['BLOCK_N']} BK{pinned['BLOCK_K']} warps {pinned['num_warps']} "
                          f"stages {pinned['num_stages']} per SM {pinned.get('PER_SM', 1)}", flush=True)
            print(f"M={M} per layer-set totals (one of each shape){'' if kind == 'fp16' else ', ' + kind}:")
            dense_wb = sum(N * K * 2 for N, K in shapes.values())
            for form in ("linear", "dequant-linear", "gemm", "step"):
                if form in total:
                    print("  " + row("", form, total[form], dense_wb if form == "linear" else wb).strip())
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    dev = kernel_device(args.device)
    torch.manual_seed(0)
    shapes = decode_gemv_shapes(NAMED_SHAPES[args.shape])
    if args.gemm:
        return gemm_main(args, dev, shapes)
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
