#!/usr/bin/env python3
"""Greedy against sampled generation in one process: tok/s of the fastest path with each pick, same model, same
prompt, alternating rounds (so drift between the two is shared), and the sampled/greedy ratio per point.

  python scripts/pick_bench.py --model random:llama-7b --batch-sizes 1,8 --temperature 0.8 --top-p 0.95
  python scripts/pick_bench.py --model random:llama3-8b --dtype bf16 --batch-sizes 1 --top-p 0.95
  python scripts/pick_bench.py --device cpu --model random:tiny --prompt-len 16 --new-tokens 8 --rounds 1

Prints a markdown table; timing is harness.measure's (warm-up, then the median of timed generate calls).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llama_fast import api, harness, loading  # noqa: E402
from llama_fast.sampling import Sampling  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pick_bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="random:llama-7b")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--dtype", default=None, help="default: fp16 on GPU, fp32 on CPU")
    p.add_argument("--variant", default=harness.FASTEST, choices=[k for k, v in harness.VARIANTS.items()
                                                                    if not v.is_transformers])
    p.add_argument("--batch-sizes", default="1", help="comma-separated (default: 1)")
    p.add_argument("--prompt-len", type=int, default=1000)
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3, help="alternating greedy/sampled rounds per point (default: 3)")
    p.add_argument("--num-runs", type=int, default=3, help="timed generate calls per round (default: 3)")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA GPU here (--device cpu runs the same measurement on the CPU)")
    try:
        a.batch_list = [int(b) for b in a.batch_sizes.split(",")]
        a.sampling = Sampling(a.temperature, a.top_k, a.top_p, a.seed)
    except ValueError as e:
        p.error(str(e))
    if min(a.batch_list + [a.prompt_len, a.new_tokens, a.rounds, a.num_runs]) < 1:
        p.error("--batch-sizes, --prompt-len, --new-tokens, --rounds and --num-runs must be at least 1")
    return a


def main(argv=None) -> list[dict]:
    a = parse_args(argv)
    api.limit_cublas_workspace()
    sampling = a.sampling
    device = torch.device(a.device)
    dtype = loading.parse_dtype(a.dtype or ("fp16" if device.type == "cuda" else "fp32"))
    fast = api.load_model(a.model, device, dtype)
    variant = harness.VARIANTS[a.variant]
    rows = []
    print(f"model {a.model} | {loading.dtype_name(dtype)} | {harness.device_name(device)} | variant {a.variant} | "
          f"prompt {a.prompt_len} | new tokens {a.new_tokens}")
    print("\n| batch | pick | tok/s (median of rounds) | rounds | ratio to greedy |\n|---|---|---|---|---|")
    for batch in a.batch_list:
        loads = {}
        for pick in ("greedy", "sampled"):
            w = harness.Workload(batch, a.prompt_len, a.new_tokens, sampling=sampling if pick == "sampled" else None)
            loads[pick] = (w, [])
        for r in range(a.rounds):
            for pick, (w, speeds) in loads.items():
                m = harness.measure(harness.fast_runner(fast, variant, w), w, warmup_runs=1 if r == 0 else 0,
                                    num_runs=a.num_runs)
                speeds.append(m.tok_per_s)
        greedy = sorted(loads["greedy"][1])[len(loads["greedy"][1]) // 2]
        for pick, (w, speeds) in loads.items():
            med = sorted(speeds)[len(speeds) // 2]
            row = dict(batch=batch, pick=w.pick, tok_per_s=med, rounds=speeds, ratio=med / greedy)
            rows.append(row)
            print(f"| {batch} | {w.pick} | {med:.1f} | {', '.join(f'{s:.1f}' for s in speeds)} | "
                  f"{row['ratio']:.3f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
