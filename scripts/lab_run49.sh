#!/usr/bin/env bash
# Sixth session, sixth call. Run 48: the counters' layout changed nothing (3.88 ms/step at stride 1 and 32 in
# two slow processes; removed). Does a process's mode follow where its per-cache buffers land? Three processes,
# each remaking its KV caches (and setup_caches' other buffers) three times at new addresses.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
for i in 1 2 3; do
  echo "### process $i"
  timeout 150 python scripts/perf_lab.py --variants fused-prefill-graph --runs 3 --breakdown --realloc-trials 3 \
    2>/dev/null | grep "prefill .* ms\|tok/s (best\|buffers\|# roofline" | cut -c1-250
done
