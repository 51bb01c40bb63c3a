"""Micro-benchmark: the batch-1 one-launch decode attention at a model's shape (Llama-7B by default: 32 heads of
128, cache 1200, 1100 attended slots) at its pinned eager config and over chunk / warps configs, each checked
against SDPA. Each call is timed inside a CUDA graph of one call per layer's cache (630 MB in all at Llama-7B,
so L2 never holds them, as in a real step); no PDL (nothing before them to overlap with).

  python scripts/attn_bench.py
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
    if (args.layers is not None and args.layers < 1) or args.reps < 1:
        ap.error("--layers and --reps must be at least 1")
    return args


def configs_to_time() -> list[tuple[str, dict | None]]:
    """(name, attention config or None for the pinned one): the pinned config first, then chunk x warps."""
    rows: list[tuple[str, dict | None]] = [("pinned", None)]
    for chunk, warps in itertools.product((32, 64, 128, 256), (2, 4, 8)):
        rows.append((f"chunk {chunk}/{warps}", {"CHUNK": chunk, "num_warps": warps}))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    dev = kernel_device(args.device)
    from llama_fast.kernels import decode_attention_one_launch
    from llama_fast.kernels.configs import ATTN_EAGER_CONFIG

    torch.manual_seed(0)
    cfg = NAMED_SHAPES[args.shape]
    B, H, Hkv, D, S, layers = 1, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, args.cache, args.layers or cfg.n_layers
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
    mbytes = args.attended * Hkv * D * 2 * 2 / 1e6  # K and V bytes read per call

    def run(config):
        with config_override({"attention": config} if config else {}):
            err = (decode_attention_one_launch(q, k0, v0, mask, D ** -0.5, cnt).float() - ref).abs().max().item()
            t = time_per_call(lambda: decode_attention_one_launch(q, *caches(), mask, D ** -0.5, cnt), dev,
                              args.reps, layers) * 1e6
        return t, err

    results = []
    for name, config in configs_to_time():
        if name == "pinned":
            name = f"pinned chunk {ATTN_EAGER_CONFIG['CHUNK']}/{ATTN_EAGER_CONFIG['num_warps']}"
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
