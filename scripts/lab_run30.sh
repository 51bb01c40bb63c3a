#!/usr/bin/env bash
# Prepared in the fourth session, not yet run: the seed table (every harness.ABLATION row, fused-eager through
# fused-prefill-graph included) in one process on one GPU, for docs/PERF.md's "seed table" section.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 580 python run_llama.py --model random:llama-7b --ablation --warmup-runs 1 --num-runs 2 \
  --output $OUT/ablation.csv > $OUT/ablation.log 2>&1; echo "ablation rc=$?"
grep "^|" $OUT/ablation.log
