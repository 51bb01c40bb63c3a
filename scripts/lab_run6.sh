#!/usr/bin/env bash
# Device run 6: first GPU run of the `fused` variant against `gemv` (cold caches: the first variant's
# warm-up is the cold figure), with the memory breakdown, the no-recompile check at the seed cache and the
# teacher-forced check; then the CUDA half of tests/test_compile.py; then prefill chunk 1024.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-ff07968}
export TORCHINDUCTOR_CACHE_DIR=/tmp/ind_cold_$$ TRITON_CACHE_DIR=/tmp/tri_cold_$$
nvidia-smi -L
timeout 330 python scripts/perf_lab.py --variants gemv,fused --breakdown --memory --check \
  --recompile 100,600,1000 --cache 1200 --log $OUT/lab6.log > $OUT/lab6.out 2>&1; echo "lab rc=$?"
tail -5 $OUT/lab6.out
timeout 120 python -m pytest -q -p no:cacheprovider tests/test_compile.py > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?"
tail -15 $OUT/gpu_tests.log
timeout 100 python scripts/perf_lab.py --variants fused --chunk 1024 --breakdown --memory --cache 1200 \
  --log $OUT/lab6_chunk1024.log > $OUT/lab6_chunk1024.out 2>&1; echo "chunk1024 rc=$?"
tail -3 $OUT/lab6_chunk1024.out
