"""Decode GEMV shapes of Llama-7B: cuBLAS vs Inductor reduction vs our Triton gemv, achieved GB/s."""
import sys

import torch
import torch.nn.functional as F

from lab_util import graph_time
from llama_fast.kernels import gemv

torch.manual_seed(0)
dev = torch.device("cuda")
shapes = {"wqkv": (12288, 4096), "wo": (4096, 4096), "w13": (22016, 4096), "w2": (4096, 11008), "out": (32000, 4096)}


def bench(fn, reps=50):
    return graph_time(fn, reps)  # seconds per call


red = torch.compile(lambda x, w: (x[:, None, :] * w[None]).sum(-1), dynamic=False)
lin = torch.compile(lambda x, w: F.linear(x, w), dynamic=False)
M = int(sys.argv[1]) if len(sys.argv) > 1 else 1
total = {}
print(f"M={M}")
for name, (N, K) in shapes.items():
    # several weight copies so consecutive calls do not hit L2 (50 MB)
    ws = [torch.randn(N, K, device=dev, dtype=torch.float16) * 0.02 for _ in range(4)]
    x = torch.randn(M, K, device=dev, dtype=torch.float16)
    ref = F.linear(x.float(), ws[0].float())
    for label, f in [("cublas", F.linear), ("inductor-linear", lin), ("inductor-reduce", red), ("triton-gemv", gemv)]:
        err = ((f(x, ws[0]).float() - ref).norm() / ref.norm()).item()
        i = [0]

        def call():
            i[0] = (i[0] + 1) % 4
            return f(x, ws[i[0]])
        t = bench(call)
        gbs = N * K * 2 / t / 1e9
        total[label] = total.get(label, 0) + t
        print(f"{name:5s} {label:16s} {t * 1e6:8.1f} us {gbs:7.0f} GB/s rel err {err:.1e}", flush=True)
wb = sum(N * K * 2 for N, K in shapes.values())
print("per layer-set totals (one of each shape):")
for k, t in total.items():
    print(f"  {k:16s} {t * 1e6:8.1f} us  {wb / t / 1e9:7.0f} GB/s")
