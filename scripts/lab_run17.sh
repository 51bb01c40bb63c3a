#!/usr/bin/env bash
# PDL + eager fused block (run 17): (1) cold warm-up of fused-pdl alone in a fresh process with empty caches,
# cProfiled (pstats dump under $OUT), with the autotuner's picks; (2) fused vs fused-eager vs fused-pdl in one
# process with the teacher-forced check and the prefill/decode split; (3) the CUDA no-recompile cases of the
# two new variants. Timeouts sum to 560 s.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
python -c "import triton; print('triton', triton.__version__)"
timeout 170 python scripts/perf_lab.py --cold --variants fused-pdl --breakdown --autotune-picks \
  --profile-warmup $OUT/warmup.prof --log $OUT/cold.log > $OUT/cold.out 2>&1; echo "cold rc=$?"
timeout 300 python scripts/perf_lab.py --variants fused,fused-eager,fused-pdl --breakdown --check --autotune-picks \
  --log $OUT/pdl.log > $OUT/pdl.out 2>&1; echo "pdl rc=$?"
timeout 90 python -m pytest -q -p no:cacheprovider tests/test_compile.py -k "fused-eager or fused-pdl" \
  > $OUT/tests.log 2>&1; echo "tests rc=$?"
grep -h "fused\|roofline\|passed\|failed\|Error" $OUT/cold.log $OUT/pdl.log $OUT/tests.log | grep -v "^    \|autotune" | head -60
grep -h "autotune" $OUT/pdl.log | sort | uniq | head -20
