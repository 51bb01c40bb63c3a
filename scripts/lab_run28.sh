#!/usr/bin/env bash
# Run 28, the judged run for FASTEST = fused-prefill-graph (fresh machine, empty caches):
#  (1) run_llama.py --compare: fused-prefill-graph vs transformers default vs static, one process, cold warm-up,
#      peaks including our CUDA-graph pools (run 26's judged peak had left them out);
#  (2) the default benchmark suite (8 cases) and its summary;
#  (3) fused-prefill-graph alone in a fresh process: what its graph pool holds.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 170 python run_llama.py --model random:llama-7b --compare > $OUT/compare.log 2>&1; echo "compare rc=$?"
timeout 290 python -m pytest benchmarks/ -p no:xdist -p no:cacheprovider --benchmark-json=$OUT/suite.json \
  > $OUT/suite.log 2>&1; echo "suite rc=$?"
python benchmarks/report.py --summary $OUT/suite.json > $OUT/suite_summary.md 2>&1
timeout 60 python scripts/perf_lab.py --variants fused-prefill-graph --runs 3 --log $OUT/pool.log \
  > /dev/null 2>$OUT/pool.err; echo "pool rc=$?"
grep -v "it/s\|run/s\|s/run\|cfg\]" $OUT/compare.log | tail -10
tail -2 $OUT/suite.log; cat $OUT/suite_summary.md
grep -h "fused" $OUT/pool.log | cut -c1-300 | head -12
