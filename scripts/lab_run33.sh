#!/usr/bin/env bash
# Fifth session, after the fix of run 32's finding (model.pdl_mode is 0 in traced code): the CUDA tests (a new
# one: no PDL kernel in the batched compiled decode), batch 16 in one process (fused, fused-prefill-graph,
# fused again), then the batch sweep of FASTEST vs transformers static again (run 31's ran with the bug).
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 100 python -m pytest -q -p no:cacheprovider -rA tests/test_compile.py -k cuda > $OUT/tests.log 2>&1
echo "tests rc=$?"
timeout 120 python scripts/perf_lab.py --batch 16 --runs 2 --breakdown --log $OUT/b16.log \
  --variants fused,fused-prefill-graph,fused > /dev/null 2>$OUT/b16.err; echo "b16 rc=$?"
timeout 340 python run_llama.py --model random:llama-7b --compare --compare-variants fused-prefill-graph,hf-static \
  --sweep batch --batch-sizes 1,2,4,8,16,32,64 --warmup-runs 1 --num-runs 2 \
  --output $OUT/sweep_batch.csv > $OUT/sweep_batch.log 2>&1; echo "batch rc=$?"
grep -E "PASSED|FAILED|ERROR|passed|failed|^E " $OUT/tests.log | head -14
grep -h "prefill .* ms\|tok/s" $OUT/b16.log | cut -c1-160
echo "mutation-analysis warnings: $(grep -c 'assuming every input is mutated' $OUT/b16.err $OUT/sweep_batch.log)"
grep -h "^| llama\|^| trans" $OUT/sweep_batch.log
