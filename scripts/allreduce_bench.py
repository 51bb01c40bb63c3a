"""Micro-benchmark: the tensor-parallel all-reduce of one decode row alone, by each LLAMA_FAST_TP_ALLREDUCE mode.
Each rank sums a (1, dim) row of the model dtype and takes the next RMSNorm's sum-of-squares partials, as the
batch-1 decode block does at its two sites: `--calls` back-to-back calls alternating the sites are captured in one
CUDA graph per rank and replayed (the gaps between kernels counted, the host's launch rate not), and the result is
checked against the sum of every rank's row. What a call costs here, against what the same kernel takes inside
the step (profile_decode.py --tp), tells the all-reduce's own latency from the ranks waiting for each other.
Under torchrun, one process per GPU; rank 0 prints.

  torchrun --nproc-per-node 2 scripts/allreduce_bench.py
  torchrun --nproc-per-node 2 scripts/allreduce_bench.py --dims 4096,8192 --modes fused,symm,nccl
  torchrun --nproc-per-node 2 scripts/allreduce_bench.py --device cpu --modes nccl --dims 64 --reps 2
    (gloo on the CPU: checks the sums, times nothing useful)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

from llama_fast.harness import call_seconds
from llama_fast.loading import parse_dtype

MODES = ("fused", "symm", "nccl")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="allreduce_bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="fused,symm,nccl", help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--dims", default="4096,8192", help="row widths (Llama-7B's 4096, Llama-2-70B's 8192)")
    ap.add_argument("--dtype", default=None, help="the model dtype (fp16, bf16, fp32; default fp16, fp32 on the CPU)")
    ap.add_argument("--calls", type=int, default=64, help="calls per timed graph (a Llama-7B step has 64)")
    ap.add_argument("--reps", type=int, default=30, help="timed replays (median)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: gloo, no graphs")
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        ap.error(f"--modes: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(MODES)}")
    try:
        args.dims = [int(d) for d in args.dims.split(",")]
    except ValueError:
        ap.error(f"--dims: comma-separated integers, got {args.dims!r}")
    if any(d < 8 or d % 8 for d in args.dims):
        ap.error("--dims: each a positive multiple of 8 (the partials' group)")
    if args.calls < 2 or args.reps < 1:
        ap.error("--calls must be at least 2 (both sites) and --reps at least 1")
    try:
        args.dtype = parse_dtype(args.dtype or ("fp16" if args.device == "cuda" else "fp32"))
    except ValueError as e:
        ap.error(f"--dtype: {e}")
    if args.device == "cpu" and args.modes != ["nccl"]:
        ap.error("--device cpu runs only --modes nccl (the process group's all-reduce over gloo): symmetric memory "
                 "and the fused kernel need GPUs")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA GPU here: use --device cpu --modes nccl for the check")
    from llama_fast.parallel import env_world

    if env_world() is None:
        ap.error("runs under torchrun, one process a GPU: torchrun --nproc-per-node 2 scripts/allreduce_bench.py")
    return args


def rows(dim: int, world: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Every rank's (1, dim) row, the same on every rank (rank r's seeded by r)."""
    out = []
    for r in range(world):
        g = torch.Generator().manual_seed(1000 + r)
        out.append(torch.randn(1, dim, generator=g).to(dtype).to(device))
    return out


def torch_partials(h: torch.Tensor) -> torch.Tensor:
    """kernels.gemv.ss_partials without importing the kernels (Triton): the sum-of-squares partials of a (1, dim)
    row in groups of 8."""
    return h.float().pow(2).view(-1, 8).sum(-1)


def reducer(mode: str, group, device: torch.device, dtype: torch.dtype):
    """f(row, site) -> (sum over the ranks, its partials), as the decode block calls it in this mode."""
    from llama_fast import parallel

    if mode == "nccl":
        partials = torch_partials
        if device.type == "cuda":  # the decode block's kernel (the CPU has no Triton to count on)
            from llama_fast.kernels import row_ss_partials as partials

        def nccl(t, site):
            h = parallel.all_reduce_sum(t, group)
            return h, partials(h)
        return nccl
    if not parallel.symmetric_memory_usable(device):
        raise SystemExit(f"allreduce_bench.py: --modes {mode} needs symmetric memory between these GPUs (one host, "
                         "peer access, compute capability 9.0+: parallel.symmetric_memory_usable)")
    symm = parallel.SymmAllReduce(group, device, dtype, fused=mode == "fused")
    return lambda t, site: symm.with_ss(t, site)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch.distributed as dist

    from llama_fast import parallel

    _, world, _ = parallel.env_world()
    device = parallel.rank_device(torch.device(args.device))
    rank, world = parallel.init_from_env(world, device)
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"# {world} ranks, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU (gloo)'}, "
        f"{args.dtype}, {args.calls} calls a graph, median of {args.reps}")
    failed = 0
    for mode in args.modes:
        f = reducer(mode, dist.group.WORLD, device, args.dtype)
        for dim in args.dims:
            parts = rows(dim, world, args.dtype, device)
            mine = parts[rank].clone()
            want = torch.stack([p.float() for p in parts]).sum(0)
            h, ss = f(mine, 0)
            err = (h.float() - want).abs().max().item() / want.abs().max().item()
            ss_err = (ss - torch_partials(h)).abs().max().item()
            site = [0]

            def call():
                site[0] ^= 1
                return f(mine, site[0])
            for _ in range(4):  # both sites' first calls (compiles, buffers) outside the graph
                call()
            seconds = statistics.median(call_seconds(call, device, args.calls, args.reps))
            ok = err < 1e-2 and ss_err < 1e-3 * max(1.0, ss.abs().max().item())
            failed += not ok
            say(f"{mode:5s} dim {dim:6d}  {seconds * 1e6:8.2f} us a call  sum err {err:.1e}  partials err "
                f"{ss_err:.1e}{'' if ok else '  WRONG'}")
    dist.barrier()  # every rank done with the group
    return 1 if failed else 0


if __name__ == "__main__":
    code = main()
    # the output is written and every rank passed the barrier: skip torch's process-group teardown at exit, which
    # can abort a gloo rank ("terminate called without an active exception", README: tensor parallel)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
