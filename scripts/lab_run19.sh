#!/usr/bin/env bash
# Run 19: fused-pdl (PDL, trigger late; pinned configs) under each of perf_lab's CONFIG_TRIALS in one process
# (decode ms/step per trial, pinned first and last); the CUDA no-recompile cases of fused-pdl/fused-eager.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 240 python scripts/perf_lab.py --variants fused-pdl --breakdown --config-trials fused-pdl \
  --log $OUT/trials.log > $OUT/trials.out 2>&1; echo "trials rc=$?"
timeout 90 python -m pytest -q -p no:cacheprovider tests/test_compile.py -k "fused-eager or fused-pdl" \
  > $OUT/tests.log 2>&1; echo "tests rc=$?"
grep -h "fused\|roofline\|trial" $OUT/trials.log | grep -v "^    "
tail -3 $OUT/tests.log
