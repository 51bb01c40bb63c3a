#!/usr/bin/env python3
"""Greedy against sampled generation in one process: tok/s of the fastest path with each pick, same model, same
prompt, alternating rounds (so drift between the two is shared), and the sampled/greedy ratio per point.

  python scripts/pick_bench.py --model random:llama-7b --batch-sizes 1,8 --temperature 0.8 --top-p 0.95
  python scripts/pick_bench.py --model random:llama3-8b --dtype bf16 --batch-sizes 1 --top-p 0.95
  python scripts/pick_bench.py --device cpu --model random:tiny --prompt-len 16 --new-tokens 8 --rounds 1

Prints a markdown table; timing is harness.measure's (warm-up, then the median of timed generate calls).

--kernel-sweep times the sampled pick alone instead (llama_fast.kernels.sampling.pick on random logits, --calls // 10
picks captured in a CUDA graph, the median of 10 replays: bench_util.time_per_call): us per pick for each filter
setting, vocabulary, batch size, tokens per program (chunk) and warps, with the pinned chunk's time beside the best. Every setting's tokens must equal the
pinned chunk's (the noise is a pure function of seed, position, row and token), so it is also a check; on the
CPU (Triton's interpreter, TRITON_INTERPRET=1) it runs as that check only, untimed:

  python scripts/pick_bench.py --kernel-sweep --vocabs 32000,128256 --batch-sizes 1,8
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench_util import kernel_device, time_per_call  # noqa: E402
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
    p.add_argument("--kernel-sweep", action="store_true",
                   help="time the sampled pick's kernels alone over chunks and warps (no model)")
    p.add_argument("--vocabs", default="32000,128256", help="with --kernel-sweep: comma-separated vocabulary sizes")
    p.add_argument("--chunks", default="256,512,1024,2048,4096",
                   help="with --kernel-sweep: comma-separated tokens per program (powers of 2)")
    p.add_argument("--warps", default="4,8", help="with --kernel-sweep: comma-separated warps per program")
    p.add_argument("--calls", type=int, default=200, help="with --kernel-sweep: picks timed per setting")
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
    if a.kernel_sweep:
        try:
            a.vocab_list = [int(v) for v in a.vocabs.split(",")]
            a.chunk_list = [int(c) for c in a.chunks.split(",")]
            a.warp_list = [int(w) for w in a.warps.split(",")]
        except ValueError as e:
            p.error(f"--vocabs / --chunks / --warps: {e}")
        if any(c < 16 or c & (c - 1) for c in a.chunk_list) or any(w not in (1, 2, 4, 8, 16) for w in a.warp_list):
            p.error("--chunks must be powers of 2 (>= 16) and --warps one of 1, 2, 4, 8, 16")
        if min(a.vocab_list + [a.calls]) < 1:
            p.error("--vocabs and --calls must be at least 1")
    return a


FILTERS = {  # label -> Sampling of the sweep: temperature only, top-k, top-p, both
    "T=0.8": Sampling(0.8, None, None, 0),
    "T=0.8 top_k=50": Sampling(0.8, 50, None, 0),
    "T=0.8 top_p=0.95": Sampling(0.8, None, 0.95, 0),
    "T=0.8 top_k=50 top_p=0.95": Sampling(0.8, 50, 0.95, 0),
}


def kernel_sweep(a) -> list[dict]:
    """us per sampled pick (kernels.sampling.pick in a CUDA graph) for each filter, vocabulary, batch, chunk and
    warps; every setting's tokens checked against the pinned chunk's."""
    device = kernel_device(a.device)  # before llama_fast.kernels is imported: the interpreter on the CPU
    from llama_fast.kernels import sampling as ks

    timed = device.type == "cuda"
    dtype = loading.parse_dtype(a.dtype or ("fp16" if timed else "fp32"))
    gen = torch.Generator(device="cpu").manual_seed(0)
    pos = torch.tensor([1000], device=device)
    rows = []
    print(f"sampled pick alone | {loading.dtype_name(dtype)} | {harness.device_name(device)} | "
          f"{'us per pick (bench_util.time_per_call)' if timed else 'untimed (interpreter check)'} | "
          f"pinned chunk {ks.CHUNK}, 4 warps")
    print("\n| filters | vocab | batch | chunk | warps | us | vs pinned |\n|---|---|---|---|---|---|---|")
    for label, smp in FILTERS.items():
        for vocab in a.vocab_list:
            st = smp.state(device, vocab)
            for batch in a.batch_list:
                # logits spread like a model's: a few dominant tokens over a long tail
                logits = (3 * torch.randn(batch, vocab, generator=gen)).to(dtype).to(device)

                def call(chunk, warps):
                    return ks.pick(logits, st.floats, st.ints, pos, st.use_top_k, st.use_top_p, chunk=chunk,
                                   warps=warps)

                ref = call(ks.CHUNK, 4)
                results = {}
                for chunk in a.chunk_list:
                    for warps in a.warp_list:
                        tok = call(chunk, warps)
                        if not torch.equal(tok, ref):
                            raise SystemExit(f"pick_bench: {label} vocab {vocab} batch {batch} chunk {chunk} warps "
                                             f"{warps}: tokens {tok.tolist()} differ from the pinned chunk's "
                                             f"{ref.tolist()}")
                        results[chunk, warps] = (1e6 * time_per_call(lambda: call(chunk, warps), device, reps=10,
                                                                     calls=a.calls // 10 or 1) if timed else None)
                pinned = results.get((ks.CHUNK, 4))
                for (chunk, warps), us in results.items():
                    row = dict(filters=label, vocab=vocab, batch=batch, chunk=chunk, warps=warps, us=us)
                    rows.append(row)
                    vs = f"{us / pinned:.2f}" if us is not None and pinned else "-"
                    print(f"| {label} | {vocab} | {batch} | {chunk} | {warps} | "
                          f"{'-' if us is None else f'{us:.1f}'} | {vs} |", flush=True)
                if timed:
                    (chunk, warps), us = min(results.items(), key=lambda kv: kv[1])
                    print(f"| **best** {label} | {vocab} | {batch} | {chunk} | {warps} | {us:.1f} | "
                          f"{us / pinned:.2f} |" if pinned else "", flush=True)
    return rows


def main(argv=None) -> list[dict]:
    a = parse_args(argv)
    if a.kernel_sweep:
        return kernel_sweep(a)
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
