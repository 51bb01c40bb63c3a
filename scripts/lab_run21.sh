#!/usr/bin/env bash
# Run 21: fused-pdl under perf_lab's CONFIG_TRIALS_2 in one process (decode ms/step per trial, pinned first
# and last), then its decode profile. For the next session's choice of pinned configs.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 200 python scripts/perf_lab.py --variants fused-pdl --breakdown --config-trials fused-pdl --trial-set 2 \
  --log $OUT/trials.log > $OUT/trials.out 2>&1; echo "trials rc=$?"
timeout 90 python scripts/profile_decode.py --variants fused-pdl --top 12 --log $OUT/prof.log > $OUT/prof.out 2>&1
echo "prof rc=$?"
grep -h "fused\|roofline\|trial" $OUT/trials.log | grep -v "^    "
cat $OUT/prof.log
