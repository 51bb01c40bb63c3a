#!/usr/bin/env bash
# Fifth session: bisect run 35's batch-1 slowdown (cf30d98 3.76 ms/step, HEAD 3.83) over the commits between
# them that touch llama_fast/; .lab/<commit> holds `git archive <commit>` (carried). One process per tree, one
# GPU, the first tree again at the end (drift).
export PYTHONUNBUFFERED=1
nvidia-smi -L
for c in cf30d98 21cc363 d53a429 0e28e39 75e7c2b 6a2e9bd e94e2e7 cf30d98; do
  (cd .lab/$c && LLAMA_FAST_COMMIT=$c PYTHONPATH=. timeout 90 python scripts/perf_lab.py --variants fused-prefill-graph \
    --runs 3 --breakdown --log $OUT/$c.log > /dev/null 2>&1; echo "$c rc=$?")
  grep -h "prefill .* ms\|tok/s (best" $OUT/$c.log | sed "s/^/$c: /" | cut -c1-150
done
