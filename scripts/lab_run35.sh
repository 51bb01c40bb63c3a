#!/usr/bin/env bash
# Fifth session: is batch 1 slower at HEAD than at cf30d98 (run 28's judged commit, 258.3 tok/s)? Runs 31-34
# read 250.9-253.8 on other hosts. Four processes on one GPU, old / new / old / new (drift shows as a trend);
# .lab/old holds `git archive cf30d98` (carried).
export LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
for i in 1 2; do
  for tree in old new; do
    dir=.; [ $tree = old ] && dir=.lab/old
    (cd $dir && PYTHONPATH=. timeout 120 python scripts/perf_lab.py --variants fused-prefill-graph --runs 3 \
      --breakdown --log $OUT/$tree$i.log > /dev/null 2>&1; echo "$tree$i rc=$?")
    grep -h "prefill .* ms\|tok/s" $OUT/$tree$i.log | sed "s/^/$tree$i: /" | cut -c1-170
  done
done
