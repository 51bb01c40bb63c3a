#!/usr/bin/env bash
# Run 18: pinned configs for eager launches. (1)+(2) cold warm-up of fused-eager in fresh processes with empty
# caches, with and without inductor's coordinate-descent tuning (prefill block); (3) fused vs fused-eager vs
# fused-pdl (then: trigger early; now fused-pdl-early) vs fused-pdl+pdl_trigger_late (now: fused-pdl) in one process, teacher-forced check; (4) decode
# profiles of fused-eager and fused-pdl. Timeouts sum to 510 s.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
for cd in 1 0; do
  LLAMA_FAST_COORDINATE_DESCENT=$cd timeout 90 python scripts/perf_lab.py --cold --variants fused-eager --breakdown \
    --compile-times --log $OUT/cd$cd.log > $OUT/cd$cd.out 2>&1; echo "cd=$cd rc=$?"
done
timeout 230 python scripts/perf_lab.py --variants fused,fused-eager,fused-pdl-early,fused-pdl \
  --breakdown --check --log $OUT/pdl.log > $OUT/pdl.out 2>&1; echo "pdl rc=$?"
timeout 100 python scripts/profile_decode.py --variants fused-eager,fused-pdl --top 8 --log $OUT/prof.log \
  > $OUT/prof.out 2>&1; echo "prof rc=$?"
grep -h "fused\|roofline" $OUT/cd1.log $OUT/cd0.log $OUT/pdl.log | grep -v "^    \|compile times" | head -40
grep -h "_compile.compile_inner\|coordinate_descent" $OUT/cd1.log $OUT/cd0.log
cat $OUT/prof.log
