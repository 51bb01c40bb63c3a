"""Device probe: what differs between a process whose batch-1 decode runs at one speed level and one at
another (docs/PERF.md rows 34 and 42: all of the difference in the one-launch decode attention kernel). Prints
the decode ms/step, the metadata of the tensors the attention op receives and of its scratch buffers (shape,
strides, dtype, data_ptr alignment), and the Triton specialization keys the attention and GEMV kernels were
compiled under. Run 45 ran it in two fast processes, run 47 in a slow one: the attention inputs' layouts and
alignments matched (run 47 stopped before printing the keys, in a graph dump since removed).

  TRITON_CACHE_DIR=/tmp/a/triton TORCHINDUCTOR_CACHE_DIR=/tmp/a/inductor python scripts/attn_mode_probe.py
"""
from __future__ import annotations

import torch
import triton

from llama_fast import kernels as kn
from llama_fast.generate import LlamaFast
from llama_fast.harness import FASTEST, VARIANTS, Workload, fast_runner, measure
from llama_fast.loading import load_weights
from perf_lab import prefill_and_step


def describe(t: torch.Tensor) -> str:
    p = t.data_ptr()
    return (f"{tuple(t.shape)} stride {tuple(t.stride())} {str(t.dtype)[6:]} ptr%16={p % 16} ptr%128={p % 128} "
            f"ptr%512={p % 512} ptr%64K={p % 65536} ptr={p:#x}")


def main():
    from llama_fast.api import limit_cublas_workspace

    limit_cublas_workspace()
    seen, scratch = [], []
    original, original_buffers = kn.decode_attention_one_launch, kn._attn_buffers

    def spy(q, k, v, mask, scale, counters, pdl=kn.PDL_OFF):
        names = ("q", "k", "v", "mask", "counters")
        seen.append("; ".join(f"{n} {describe(t)}" for n, t in zip(names, (q, k, v, mask, counters))))
        return original(q, k, v, mask, scale, counters, pdl)

    def buffers(q, S, chunk):
        nsplit, *bufs = original_buffers(q, S, chunk)
        scratch.append("; ".join(f"{n} {describe(t)}" for n, t in zip(("m", "l", "acc", "o"), bufs)))
        return (nsplit, *bufs)

    kn.decode_attention_one_launch, kn._attn_buffers = spy, buffers
    dev = torch.device("cuda")
    cfg, model, tok = load_weights("random:llama-7b", dev, torch.float16)
    fast = LlamaFast(model, tok, "random:llama-7b")
    variant = VARIANTS[FASTEST]
    w = Workload(1, 1000, 200, 1200)
    m = measure(fast_runner(fast, variant, w), w, 1, 3)
    pre, step = prefill_and_step(fast, variant, w, m)
    print(f"decode {step * 1e3:.3f} ms/step, {m.tok_per_s:.1f} tok/s, prefill {pre * 1e3:.1f} ms, hash {m.hash}")
    print(f"attention op calls: {len(seen)}; the last call's inputs: {seen[-1] if seen else None}")
    print(f"attention scratch, last call: {scratch[-1] if scratch else None}")
    for name in ("_decode_attn_one_launch_kernel", "_gemv_fused_kernel", "_gemv_qkv_rope_kernel"):
        fn = getattr(kn, name)
        fn = fn.fn if isinstance(fn, triton.runtime.Autotuner) else fn  # the JITFunction under an autotuner
        try:
            for device, caches in fn.device_caches.items():
                for key in caches[0]:
                    print(f"{name} device {device} key: {str(key)[:900]}")
        except (AttributeError, IndexError, TypeError) as e:
            print(f"{name}: compiled keys unavailable in this Triton ({type(e).__name__})")


if __name__ == "__main__":
    main()
