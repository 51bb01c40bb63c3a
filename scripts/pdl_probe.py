"""Device probe (fifth session): which PDL mode each of our kernel launches gets in a batch-1 fused-prefill-graph
generate, and in what state (torch.compile session flag, stream capture). Counts per (op, requested, result,
compiling, capturing)."""
from __future__ import annotations

import collections
import sys

import torch

from llama_fast import kernels as kn
from llama_fast.generate import LlamaFast
from llama_fast.harness import VARIANTS, FASTEST
from llama_fast.loading import load_weights


def main():
    seen = collections.Counter()
    original = kn.use_pdl

    def spy(x, pdl):
        result = original(x, pdl)
        op = sys._getframe(1).f_code.co_name
        seen[(op, pdl, result, torch.compiler.is_compiling(), torch.cuda.is_current_stream_capturing())] += 1
        return result

    kn.use_pdl = spy
    cfg, model, tok = load_weights("random:llama-7b", torch.device("cuda"), torch.float16)
    v = VARIANTS[FASTEST]
    fast = LlamaFast(model, tok, options=v.options, compile=v.compile, prefill_chunk=v.prefill_chunk,
                     cache_length=1200)
    ids = torch.randint(1, 10, (1, 1000))
    for _ in range(3):
        fast.generate(ids, max_new_tokens=8, min_new_tokens=8)
    print("torch", torch.__version__)
    for k, n in sorted(seen.items(), key=str):
        print(n, "x (op, requested, result, compiling, capturing) =", k)


if __name__ == "__main__":
    main()
