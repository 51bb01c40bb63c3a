"""Micro-benchmark: the decode attention at a model's shape (Llama-7B by default: 32 heads of 128, cache 1200,
1100 attended slots) at its pinned config and over chunk / warps configs, each checked against SDPA: the batch-1
one-launch form, or (--form split) the two-kernel form that batches above 1 run. Each call is timed inside a
CUDA graph of one call per layer's cache (630 MB in all at Llama-7B batch 1, so L2 never holds them, as in a
real step); no PDL (nothing before them to overlap with).

  python scripts/attn_bench.py
  python scripts/attn_bench.py --form split --batch 8
    (the batch-8 step's attention: its compiled config, ATTN_CHUNK / ATTN_COMPILED_WARPS, is the "pinned" row)
  python scripts/attn_bench.py --form split --batch 8 --shape llama3-8b
    (a GQA shape: also the tensor-core GQA kernel's configs, the "gqa-dot" rows, and its span form's, the
    "gqa-span" rows; "pinned" is that kernel's eager config, ATTN_GQA_EAGER_CONFIG, where it is on)
  python scripts/attn_bench.py --device cpu --shape tiny --cache 80 --attended 70 --layers 2 --reps 1
    (Triton's interpreter on the CPU: checks that every config builds and matches SDPA, times nothing useful)
"""
from __future__ import annotations

import argparse
import itertools
import sys

import torch
import torch.nn.functional as F

from bench_util import config_override, kernel_device, rotating, time_per_call
from llama_fast.config import NAMED_SHAPES


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="attn_bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama-7b", choices=sorted(NAMED_SHAPES), help="model whose heads are used")
    ap.add_argument("--form", default="one-launch", choices=("one-launch", "split"),
                    help="one-launch: batch 1's kernel; split: the two-kernel form of batches above 1")
    ap.add_argument("--batch", type=int, default=1, help="rows, each with its own cache")
    ap.add_argument("--cache", type=int, default=1200, help="KV cache slots")
    ap.add_argument("--attended", type=int, default=1100, help="slots attended (the rest masked)")
    ap.add_argument("--layers", type=int, default=None,
                    help="caches rotated, one call each per timed graph (default: the model's layer count)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: the kernel in Triton's interpreter (a check, not a timing)")
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions (median)")
    args = ap.parse_args(argv)
    if not 1 <= args.attended <= args.cache:
        ap.error("--attended must be between 1 and --cache")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA GPU here (--device cpu runs the kernels in Triton's interpreter)")
    if (args.layers is not None and args.layers < 1) or args.reps < 1 or args.batch < 1:
        ap.error("--layers, --reps and --batch must be at least 1")
    return args


# the span form of the tensor-core GQA kernel (attention.span_config): tile slots, warps, programs an SM, stages
SPAN_GRID = [(64, 4, w, s) for w in (1, 2, 3, 4) for s in (2, 3)] + [(32, 4, 2, 3), (32, 2, 3, 3), (64, 2, 3, 2),
                                                                       (64, 8, 2, 2), (128, 4, 2, 2), (128, 8, 1, 2)]


def configs_to_time(gqa_dot: bool = False) -> list[tuple[str, dict | None]]:
    """(name, attention config or None for the pinned one): the pinned config first, then chunk x warps; with
    gqa_dot (the split form of a GQA shape) also the tensor-core GQA kernel's (GQA_DOT) chunk x warps."""
    rows: list[tuple[str, dict | None]] = [("pinned", None)]
    for chunk, warps in itertools.product((32, 64, 128, 256), (2, 4, 8)):
        rows.append((f"chunk {chunk}/{warps}", {"CHUNK": chunk, "num_warps": warps}))
    for chunk, warps in itertools.product((32, 64, 128), (2, 4, 8)) if gqa_dot else ():
        rows.append((f"gqa-dot chunk {chunk}/{warps}", {"CHUNK": chunk, "num_warps": warps, "GQA_DOT": 1}))
    for chunk, warps, waves, stages in SPAN_GRID if gqa_dot else ():
        rows.append((f"gqa-span tile {chunk}/{warps} waves {waves} stages {stages}",
                     {"CHUNK": chunk, "num_warps": warps, "GQA_DOT": 1, "WAVES": waves, "STAGES": stages}))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    dev = kernel_device(args.device)
    from llama_fast.kernels import decode_attention, decode_attention_one_launch
    from llama_fast.kernels.attention import batched_eager_config
    from llama_fast.kernels.configs import ATTN_EAGER_CONFIG, ATTN_GQA_DOT
    from llama_fast.kernels.gemm import sm_count

    torch.manual_seed(0)
    cfg = NAMED_SHAPES[args.shape]
    B, H, Hkv, D, S = args.batch, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, args.cache
    layers = args.layers or cfg.n_layers
    dt = torch.float16
    q = torch.randn(B, H, 1, D, device=dev, dtype=dt)
    caches = rotating(lambda: (torch.randn(B, Hkv, S, D, device=dev, dtype=dt),
                               torch.randn(B, Hkv, S, D, device=dev, dtype=dt)), layers)
    mask = torch.zeros(B, S, dtype=torch.bool, device=dev)
    mask[:, :args.attended] = True
    cnt = torch.zeros(B * H, dtype=torch.int32, device=dev)
    k0, v0 = caches()
    ref = F.scaled_dot_product_attention(q.float(), k0.float(), v0.float(), attn_mask=mask[:, None, None, :],
                                         enable_gqa=H != Hkv)
    mbytes = B * args.attended * Hkv * D * 2 * 2 / 1e6  # K and V bytes read per call
    if args.form == "split":  # the batched step's config, asked for explicitly (at batch 1 too)
        pinned = {**batched_eager_config(S, D, H, Hkv, B, sm_count(dev)), "GQA_DOT": int(ATTN_GQA_DOT)}

        def attend(k, v):
            return decode_attention(q, k, v, mask, D ** -0.5)
    else:  # the eager launch's own config (this GPU's table entry: no override)
        pinned = None

        def attend(k, v):
            return decode_attention_one_launch(q, k, v, mask, D ** -0.5, cnt)

    def run(config):
        config = config or pinned
        with config_override({"attention": config} if config else {}):
            err = (attend(k0, v0).float() - ref).abs().max().item()
            t = time_per_call(lambda: attend(*caches()), dev, args.reps, layers) * 1e6
        return t, err

    results = []
    for name, config in configs_to_time(args.form == "split" and H != Hkv):
        if name == "pinned":
            shown = pinned or ATTN_EAGER_CONFIG
            name = f"pinned chunk {shown['CHUNK']}/{shown['num_warps']}"
            if "WAVES" in shown:  # the span form
                name += f" span waves {shown['WAVES']} stages {shown['STAGES']}"
        try:
            t, err = run(config)
        except Exception as e:  # a config that does not compile: say so and go on
            print(f"{name}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
            continue
        results.append((t, name))
        print(f"{name:45s} {t:6.2f} us  {mbytes / t:5.2f} TB/s  max err {err:.1e}", flush=True)
    print("best:")
    for t, name in sorted(results)[:6]:
        print(f"  {t:6.2f} us  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
