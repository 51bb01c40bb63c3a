"""Device probe: the split-K decode attention at the Llama-7B decode shape, eager and under torch.compile,
against SDPA; prints the full error if either fails to build."""
from __future__ import annotations

import sys
import traceback

import torch
import torch.nn.functional as F
import triton

from llama_fast import kernels as kn


def main():
    print("triton", triton.__version__, "torch", torch.__version__, flush=True)
    torch.manual_seed(0)
    B, H, Hkv, S, D = 1, 32, int(sys.argv[1]) if len(sys.argv) > 1 else 32, 1200, 128
    q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.float16)
    k = torch.randn(B, Hkv, S, D, device="cuda", dtype=torch.float16)
    v = torch.randn(B, Hkv, S, D, device="cuda", dtype=torch.float16)
    mask = torch.zeros(B, S, dtype=torch.bool, device="cuda")
    mask[:, :1000] = True
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], enable_gqa=H != Hkv)
    for name, fn in (("eager", kn.decode_attention), ("compiled", torch.compile(kn.decode_attention, fullgraph=True))):
        try:
            out = fn(q, k, v, mask, D ** -0.5)
            torch.cuda.synchronize()
            print(name, "max abs err", (out.float() - ref.float()).abs().max().item(), flush=True)
        except Exception:  # print everything: this is the probe's purpose
            print(name, "FAILED", flush=True)
            traceback.print_exc()


if __name__ == "__main__":
    main()
