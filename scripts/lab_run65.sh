#!/usr/bin/env bash
# Seventh session, fifth call: fused-gemv-early (the new FASTEST: residual GEMVs at BK 1024 / 8 warps, GEMVs trigger
# early) against fused-prefill-graph alternating in one process with the teacher-forced check, then the judged
# compare twice (two processes), clocks sampled throughout.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
source "$(dirname "$0")/lab_lib.sh"
nvidia-smi -L
clocks_start
P=fused-prefill-graph; E=fused-gemv-early
timeout 200 python scripts/perf_lab.py --variants $P,$E,$P,$E --runs 3 --breakdown --check \
  --log $OUT/ab.log > $OUT/ab.out 2>&1; echo "ab rc=$?"
grep -h "prefill .* ms\|tok/s (best\|# roofline" $OUT/ab.log | cut -c1-200
judged_compares 2
clocks_summary
