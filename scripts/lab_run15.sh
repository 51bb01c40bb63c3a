#!/usr/bin/env bash
# Next device run (prepared, not yet run): (1) the fastest path's cold warm-up alone in a fresh process with
# empty caches, its compile-time breakdown and memory; (2) fused vs the opt-in fused-rope, fused-1launch and
# both, in one process, with the teacher-forced check; (3) their decode profiles (watch for a whole-cache
# copy per step); (4) the CUDA cases of the no-recompile test. Timeouts sum to 580 s (one call).
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
timeout 120 python scripts/perf_lab.py --cold --variants fused --breakdown --compile-times --memory \
  --log $OUT/cold.log > $OUT/cold.out 2>&1; echo "cold rc=$?"
timeout 230 python scripts/perf_lab.py --variants fused,fused-rope,fused-1launch,fused-rope+attention_one_launch \
  --breakdown --check \
  --log $OUT/rope.log > $OUT/rope.out 2>&1; echo "rope rc=$?"
timeout 100 python scripts/profile_decode.py --variants fused-rope,fused-1launch --top 12 --log $OUT/prof.log > $OUT/prof.out 2>&1
timeout 130 python -m pytest -q -p no:cacheprovider tests/test_compile.py > $OUT/tests.log 2>&1; echo "tests rc=$?"
grep -h "fused\|roofline\|passed\|failed" $OUT/cold.log $OUT/rope.log $OUT/tests.log | grep -v "^    "
cat $OUT/prof.log
