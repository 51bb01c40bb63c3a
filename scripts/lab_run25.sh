#!/usr/bin/env bash
# Run 25. Run 24's judged --compare gave fused-glue 85.3 % of its roofline, but a fresh process with empty
# caches took 31.5 s to warm up (target 30), and the prefill varied from 36 to 45 ms between processes
# (26 ms with 1024-token chunks, over the memory budget). Here:
#  (1) one process: fused-glue, fused-prefill-graph (each prefill chunk a CUDA graph), fused-glue@1024;
#  (2) cold warm-up of fused-prefill-graph (glue now compiled without coordinate descent), compile times;
#  (3) the same with coordinate descent off everywhere (LLAMA_FAST_COORDINATE_DESCENT=0);
#  (4) prefill kernel tables: wall against summed kernel time (is the eager prefill host-bound?);
#  (5) the CUDA no-recompile tests of fused-glue and fused-prefill-graph.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 130 python scripts/perf_lab.py --variants fused-glue,fused-prefill-graph,fused-glue@1024 --breakdown --runs 5 \
  --log $OUT/ab.log > /dev/null 2>$OUT/ab.err; echo "ab rc=$?"
timeout 70 python scripts/perf_lab.py --cold --variants fused-prefill-graph --compile-times --log $OUT/cold.log \
  > /dev/null 2>>$OUT/ab.err; echo "cold rc=$?"
LLAMA_FAST_COORDINATE_DESCENT=0 timeout 60 python scripts/perf_lab.py --cold --variants fused-prefill-graph \
  --log $OUT/cold_nocd.log > /dev/null 2>>$OUT/ab.err; echo "cold-nocd rc=$?"
timeout 100 python scripts/profile_decode.py --variants fused-glue,fused-prefill-graph --prefill-top 16 \
  --log $OUT/profile.log > /dev/null 2>$OUT/profile.err; echo "profile rc=$?"
timeout 100 python -m pytest -q -p no:cacheprovider -rA tests/test_compile.py \
  -k "cuda and (fused-glue or fused-prefill-graph)" > $OUT/tests.log 2>&1; echo "tests rc=$?"
grep -E "PASSED|FAILED|ERROR|passed|failed|^E " $OUT/tests.log | head -8
grep -h "fused\|roofline\|warm" $OUT/ab.log $OUT/cold.log $OUT/cold_nocd.log | grep -v "^    " | head -30
grep -h "##\|timeline\|wqkv\|wo \|w13\|w2 \|head " $OUT/profile.log | head -30
tail -3 $OUT/ab.err $OUT/profile.err
