#!/usr/bin/env bash
# Device lab run 2: GEMV kernels, manual CUDA-graph decode with and without coordinate descent.
export PYTHONPATH=.
timeout 150 python scripts/gemv_bench.py 1 > $OUT/gemv1.log 2>&1; tail -9 $OUT/gemv1.log
LLAMA_FAST_COORDINATE_DESCENT=0 timeout 200 python scripts/perf_lab.py --variants graphs --runs 3 --breakdown --log $OUT/lab2a.log 2>$OUT/lab2a.err | tail -3
timeout 260 python scripts/perf_lab.py --variants graphs,gemv --runs 3 --breakdown --log $OUT/lab2b.log 2>$OUT/lab2b.err | tail -3
tail -3 $OUT/lab2a.err $OUT/lab2b.err
