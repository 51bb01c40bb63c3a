#!/usr/bin/env bash
# Prepared, not yet run: cold warm-up of the fastest path with and without inductor's coordinate-descent
# tuning (compile.configure_inductor; LLAMA_FAST_COORDINATE_DESCENT=0 turns it off). With the decode GEMVs and
# attention in our own Triton kernels, CD now tunes only the glue kernels and the prefill block's: predicted
# several seconds less cold warm-up for < 1 % of speed. Each process gets fresh empty caches (--cold); then
# the GEMV config sweep.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
for cd in 1 0; do
  LLAMA_FAST_COORDINATE_DESCENT=$cd timeout 120 python scripts/perf_lab.py --cold --variants fused --breakdown \
    --compile-times --log $OUT/cd$cd.log > $OUT/cd$cd.out 2>&1; echo "cd=$cd rc=$?"
done
timeout 300 python scripts/fused_bench.py --sweep-configs > $OUT/sweep_configs.log 2>&1; echo "sweep rc=$?"
grep -h "fused:" $OUT/cd1.log $OUT/cd0.log
grep -E "^(wqkv|wo|w13|w2|out) |best|pick" $OUT/sweep_configs.log
