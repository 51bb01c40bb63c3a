#!/usr/bin/env bash
# Run 22: the CUDA no-recompile cases now that each LlamaFast re-binds its own options and compiled blocks
# to the shared model (before, the test's eager reference silently reset the model to the default path);
# fused-pdl vs fused-glue (compiled step glue) in one process with the teacher-forced check and the
# recompile probe at prompts 100, 600, 1000.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 100 python -m pytest -q -p no:cacheprovider -rA tests/test_compile.py \
  -k "cuda and (fused-pdl or fused-eager or fused-glue)" > $OUT/tests.log 2>&1; echo "tests rc=$?"
grep -E "PASSED|FAILED|ERROR|passed|failed|^E " $OUT/tests.log | head -12
timeout 150 python scripts/perf_lab.py --variants fused-pdl,fused-glue --check --breakdown --recompile 100,600,1000 \
  --log $OUT/glue.log > $OUT/glue.out 2>&1; echo "glue rc=$?"
grep -h "fused\|roofline\|recompile\|graphs\|prompt" $OUT/glue.log | grep -v "^    " | head -30
