#!/usr/bin/env bash
# Sixth session, tenth call: the CUDA compile tests with the attention kernels as plain @triton.jit (run 52:
# cuda-fused-1launch failed inside Inductor's launcher for the one-config autotuned one-launch kernel).
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
timeout 250 python -m pytest -q -p no:cacheprovider tests/test_compile.py -rf 2>&1 > $OUT/test_compile.log
grep "^E \|^FAILED" $OUT/test_compile.log | head -20 | cut -c1-250; tail -2 $OUT/test_compile.log
timeout 60 python -m pytest -q -p no:cacheprovider tests/test_kernels.py -rs 2>&1 | tail -2 | cut -c1-300
