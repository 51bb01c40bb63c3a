#!/usr/bin/env bash
# Run 24 (first call of the fourth session, fresh machine):
#  (1) the judged run_llama.py --compare with FASTEST = fused-glue, cold caches;
#  (2) a cold warm-up of fused-glue alone in a fresh process with empty caches;
#  (3) fused-pdl vs fused-glue prefill and decode in one process, 5 runs (run 22: 32.0 vs 39.9 ms prefill);
#  (4) fused-glue with 1024-token prefill chunks: prefill time and the memory peak (another process);
#  (5) where the prefill's time goes (kernel table of a 1-new-token run) and the decode timeline per GEMV.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 170 python run_llama.py --model random:llama-7b --compare > $OUT/compare.log 2>&1; echo "compare rc=$?"
timeout 60 python scripts/perf_lab.py --cold --variants fused-glue --breakdown --log $OUT/cold.log \
  > /dev/null 2>$OUT/cold.err; echo "cold rc=$?"
timeout 75 python scripts/perf_lab.py --variants fused-pdl,fused-glue --breakdown --runs 5 --log $OUT/prefill.log \
  > /dev/null 2>$OUT/prefill.err; echo "prefill rc=$?"
timeout 60 python scripts/perf_lab.py --variants fused-glue --chunk 1024 --breakdown --memory --log $OUT/chunk.log \
  > /dev/null 2>&1; echo "chunk rc=$?"
timeout 100 python scripts/profile_decode.py --variants fused-pdl,fused-glue --prefill-top 22 --log $OUT/profile.log \
  > /dev/null 2>&1; echo "profile rc=$?"
grep -v "it/s\|run/s\|s/run\|cfg\]" $OUT/compare.log | tail -12
grep -h "fused\|roofline" $OUT/cold.log $OUT/prefill.log $OUT/chunk.log | grep -v "^    " | head -30
tail -3 $OUT/cold.err $OUT/prefill.err
