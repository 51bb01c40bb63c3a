#!/usr/bin/env bash
# Run 20 (the judged run): (1) run_llama.py --compare on a fresh machine (cold caches): FASTEST (fused-pdl) vs
# transformers default vs static in one process; (2) fused-eager and fused-pdl with the teacher-forced check and
# the prefill/decode split; (3) the CUDA no-recompile cases of fused-pdl and fused-eager; (4) the default
# suite's fused-pdl cases (seed, b4, p200, p1600; b16 left out for time) with their hash/memory/teacher-forced assertions.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 240 python run_llama.py --model random:llama-7b --compare > $OUT/compare.log 2>&1; echo "compare rc=$?"
timeout 110 python scripts/perf_lab.py --variants fused-eager,fused-pdl --check --breakdown \
  --log $OUT/check.log > $OUT/check.out 2>&1; echo "check rc=$?"
timeout 60 python -m pytest -q -p no:cacheprovider -rA tests/test_compile.py -k "cuda and (fused-pdl or fused-eager)" \
  > $OUT/tests.log 2>&1; echo "tests rc=$?"
timeout 170 python -m pytest benchmarks/ -p no:xdist -p no:cacheprovider -k "fused-pdl and not b16" --benchmark-json=$OUT/suite.json \
  > $OUT/suite.log 2>&1; echo "suite rc=$?"
python benchmarks/report.py --summary $OUT/suite.json > $OUT/suite_summary.md 2>&1
tail -25 $OUT/compare.log
grep -h "fused\|roofline" $OUT/check.log | grep -v "^    "
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/tests.log | tail -4
tail -3 $OUT/suite.log; cat $OUT/suite_summary.md
