#!/usr/bin/env bash
# Run 26 (FASTEST = fused-prefill-graph, committed before the run):
#  (1) the judged run_llama.py --compare on a fresh machine, caches empty (so its warm-up is a cold one);
#  (2) one process: fused-glue, fused-glue with graphed prefill only, fused-prefill-graph (graph + MLP halves):
#      prefill / decode split and peaks that now include our CUDA-graph pools;
#  (3) the CUDA no-recompile tests of fused-glue and fused-prefill-graph (prefill graph captured once, pools > 0).
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 170 python run_llama.py --model random:llama-7b --compare > $OUT/compare.log 2>&1; echo "compare rc=$?"
timeout 130 python scripts/perf_lab.py --variants fused-glue,fused-glue+graphed_prefill,fused-prefill-graph \
  --breakdown --runs 5 --log $OUT/ab.log > /dev/null 2>$OUT/ab.err; echo "ab rc=$?"
timeout 100 python -m pytest -q -p no:cacheprovider -rA tests/test_compile.py \
  -k "cuda and (fused-glue or fused-prefill-graph)" > $OUT/tests.log 2>&1; echo "tests rc=$?"
grep -v "it/s\|run/s\|s/run\|cfg\]" $OUT/compare.log | tail -10
grep -E "PASSED|FAILED|ERROR|passed|failed|^E " $OUT/tests.log | head -8
grep -h "fused\|roofline" $OUT/ab.log | grep -v "^    " | head -20
tail -3 $OUT/ab.err
