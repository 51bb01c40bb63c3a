#!/usr/bin/env bash
# Device lab run 3: regional compile (cold inductor cache) for graphs / gemv, prefill chunk 256 vs 512.
export PYTHONPATH=.
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cold-$$
timeout 330 python scripts/perf_lab.py --variants hf-static,graphs,gemv --runs 3 --breakdown --log $OUT/lab3a.log 2>$OUT/lab3a.err | tail -4
timeout 200 python scripts/perf_lab.py --variants gemv --chunk 512 --runs 3 --breakdown --log $OUT/lab3b.log 2>$OUT/lab3b.err | tail -3
tail -n 3 $OUT/lab3a.err $OUT/lab3b.err
