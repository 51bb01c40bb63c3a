#!/usr/bin/env bash
# Ran at commit 9d4186e; what it tries was removed after it (docs/PERF.md row 35), so it runs only there.
# Sixth session: the span form of the one-launch decode attention (a pipelined online softmax per span, one
# wave of programs) against the chunk form, alone (attn_bench.py) and in the real step (perf_lab trial set 3,
# one process), plus the kernels' interpreter-free check on the GPU.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
timeout 150 python scripts/attn_bench.py 2>&1 | tail -60
timeout 240 python scripts/perf_lab.py --variants fused-prefill-graph --runs 3 --breakdown --config-trials \
  fused-prefill-graph --trial-set 3 2>/dev/null | grep "prefill .* ms\|tok/s (best\|trial\|# roofline" | cut -c1-200
timeout 100 python -m pytest -q -x tests/test_kernels.py 2>&1 | tail -3
