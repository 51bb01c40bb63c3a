"""Device probe: the batch-1 decode attention forms at the Llama-7B seed shape (H = 32, D = 128, cache 1200,
1100 attended slots), alone. Each call is timed inside a CUDA graph of 32 calls, one per layer's cache (630 MB
in all, so L2 never holds them, as in a real step); no PDL (nothing before them to overlap with).

  python scripts/attn_bench.py | tee $OUT/attn_bench.log

Forms: the one-launch chunk kernel at its eager config (kernels.ATTN_EAGER_CONFIG) and other chunk / warps,
each checked against SDPA. Run 44 timed a span form here too (commit 9d4186e: an online softmax over tiles of
a span per program, 12-24 us against the chunk form's 10-11), run 45 K/V loads not waiting for the mask
(commit 7355385: no faster alone, slower in the step), run 51 both products on tensor cores (commit 790424d,
USE_DOT: 11.2-19 us, slower in the step); docs/PERF.md rows 35-40.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from lab_util import graph_time, rotating
from llama_fast import kernels as kn

B, H, S, D, VALID, LAYERS = 1, 32, 1200, 128, 1100, 32


def main():
    torch.manual_seed(0)
    dev, dt = torch.device("cuda"), torch.float16
    q = torch.randn(B, H, 1, D, device=dev, dtype=dt)
    caches = rotating(lambda: (torch.randn(B, H, S, D, device=dev, dtype=dt),
                               torch.randn(B, H, S, D, device=dev, dtype=dt)), LAYERS)
    mask = torch.zeros(B, S, dtype=torch.bool, device=dev)
    mask[:, :VALID] = True
    cnt = torch.zeros(B * H, dtype=torch.int32, device=dev)
    k0, v0 = caches()
    ref = F.scaled_dot_product_attention(q.float(), k0.float(), v0.float(), attn_mask=mask[:, None, None, :])
    mbytes = VALID * H * D * 2 * 2 / 1e6  # K and V bytes read per call

    def run(override):
        kn.CONFIG_OVERRIDE = (lambda form, n, K: override) if override else None
        try:
            err = (kn.decode_attention_one_launch(q, k0, v0, mask, D ** -0.5, cnt).float() - ref).abs().max().item()
            t = graph_time(lambda: kn.decode_attention_one_launch(q, *caches(), mask, D ** -0.5, cnt), reps=30,
                           calls=LAYERS) * 1e6
        finally:
            kn.CONFIG_OVERRIDE = None
        return t, err

    rows = [("chunk eager " + str(kn.ATTN_EAGER_CONFIG), None)]
    for chunk, warps in itertools.product((32, 64, 128, 256), (2, 4, 8)):
        rows.append((f"chunk {chunk}/{warps}", {"CHUNK": chunk, "num_warps": warps}))
    results = []
    for name, override in rows:
        try:
            t, err = run(override)
        except Exception as e:  # a config that does not compile: say so and go on
            print(f"{name}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
            continue
        results.append((t, name))
        print(f"{name:45s} {t:6.2f} us  {mbytes / t:5.2f} TB/s  max err {err:.1e}", flush=True)
    print("best:")
    for t, name in sorted(results)[:6]:
        print(f"  {t:6.2f} us  {name}")


if __name__ == "__main__":
    main()
