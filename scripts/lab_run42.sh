#!/usr/bin/env bash
# Fifth session: runs 35-41 found the batch-1 decode bimodal (3.80 or 3.88 ms/step, all of the difference in the
# one-launch decode attention kernel) and sticky within a process, with no code difference. Is it where the
# step's buffers land? perf_lab holds a padding allocation (--pad-mb; an environment variable when run 42 ran)
# before the model's caches and graphs are made; one process per padding, default caches.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
for pad in 0 0.5 1 2 3 5 8 0; do
  timeout 60 python scripts/perf_lab.py --pad-mb $pad --variants fused-prefill-graph --runs 3 --breakdown \
    2>/dev/null | grep "prefill .* ms\|tok/s (best" | sed "s/^/pad $pad MB: /" | cut -c1-150
done
