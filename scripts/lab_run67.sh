#!/usr/bin/env bash
# Seventh session, seventh call: the judged compare twice at the final code (PIPELINE removed, kernels as in runs
# 65-66) on a fresh machine, clocks sampled: does the margin hold on another host?
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
source "$(dirname "$0")/lab_lib.sh"
nvidia-smi -L
clocks_start
judged_compares 2
timeout 100 python scripts/perf_lab.py --variants fused-prefill-graph,fused-gemv-early --runs 3 --breakdown \
  --log $OUT/ab.log > $OUT/ab.out 2>&1; echo "ab rc=$?"
grep -h "prefill .* ms\|# roofline" $OUT/ab.log | cut -c1-200
clocks_summary
