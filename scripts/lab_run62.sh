#!/usr/bin/env bash
# Seventh session, second call: the residual GEMVs (wo, w2) at BLOCK_K 1024 with 8 warps in the real step
# (CONFIG_TRIALS_4), one process, pinned first and again.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
timeout 280 python scripts/perf_lab.py --variants fused-prefill-graph --breakdown --config-trials fused-prefill-graph \
  --trial-set 4 --log $OUT/trials.log > $OUT/trials.out 2>&1; echo "trials rc=$?"
grep -h "prefill .* ms\|tok/s (best\|# roofline\|trial" $OUT/trials.log | cut -c1-200
tail -3 $OUT/trials.out
