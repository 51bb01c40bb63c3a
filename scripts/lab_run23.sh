#!/usr/bin/env bash
# Prepared for the next session, not yet run. The judged run for FASTEST = fused-glue (row 24), then what
# this issue still lacks for it. Each step is cut at its timeout and its log stays under $OUT; the timeouts
# add up to 580 s, so this is one call.
#  (1) run_llama.py --compare on a fresh machine: fused-glue vs transformers default vs static in one process,
#      cold warm-up included.
#  (2) a cold warm-up of fused-glue alone, in a fresh process with empty caches (its teacher-forced check:
#      run 22).
#  (3) fused-pdl vs fused-glue prefill and decode in one process: run 22 had fused-glue's prefill at 39.9 ms
#      against 32.0 (is the compiled input preparation slowing the prefill chunks?).
#  (4) the default suite (8 cases) with fused-glue as the fastest path.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 170 python run_llama.py --model random:llama-7b --compare > $OUT/compare.log 2>&1; echo "compare rc=$?"
timeout 60 python scripts/perf_lab.py --cold --variants fused-glue --breakdown --log $OUT/cold.log \
  > $OUT/cold.out 2>&1; echo "cold rc=$?"
timeout 60 python scripts/perf_lab.py --variants fused-pdl,fused-glue --breakdown --runs 5 --log $OUT/prefill.log \
  > $OUT/prefill.out 2>&1; echo "prefill rc=$?"
timeout 290 python -m pytest benchmarks/ -p no:xdist -p no:cacheprovider --benchmark-json=$OUT/suite.json \
  > $OUT/suite.log 2>&1; echo "suite rc=$?"
python benchmarks/report.py --summary $OUT/suite.json > $OUT/suite_summary.md 2>&1
grep -v "it/s\|run/s\|s/run\|cfg\]" $OUT/compare.log | tail -12
grep -h "fused\|roofline" $OUT/cold.log $OUT/prefill.log | grep -v "^    "
tail -2 $OUT/suite.log; cat $OUT/suite_summary.md
