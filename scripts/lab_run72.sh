#!/usr/bin/env bash
# Ran at commit 2a201e7 (run 72). ACC_1D and CONFIG_TRIALS_6 were removed afterwards (docs/PERF.md row 49).
# Seventh session: the decode GEMVs with a (BLOCK_N,) accumulator (ACC_1D: fewer registers, more programs per SM)
# in the real step, trial set 6 on fused-gemv-early, one process, pinned first and again.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
timeout 280 python scripts/perf_lab.py --variants fused-gemv-early --breakdown --config-trials fused-gemv-early \
  --trial-set 6 --log $OUT/trials.log > $OUT/trials.out 2>&1; echo "trials rc=$?"
grep -h "prefill .* ms\|tok/s (best\|# roofline\|trial" $OUT/trials.log | cut -c1-200
tail -3 $OUT/trials.out
