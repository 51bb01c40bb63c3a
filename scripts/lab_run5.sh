#!/usr/bin/env bash
# Device run 5: benchmark gate on the fastest path: record hashes + baseline, 2 unchanged compares (spread),
# one compare with an injected 10% slowdown.
export PYTHONPATH=. LLAMA_FAST_COMMIT=029f272
cp benchmarks/expected_hashes.json $OUT/hashes.json
K="gemv-b1-p1000-n200-fp16 or gemv-b4-p1000-n200-fp16"
B="python -m pytest benchmarks/ -p no:xdist -q -k"
S="--bench-hashes $OUT/hashes.json --benchmark-storage=file:///tmp/bench"
timeout 150 $B "$K" $S --bench-update-hashes --benchmark-save=main --benchmark-json=$OUT/r1.json > $OUT/r1.log 2>&1; echo "r1 rc=$?"
for i in 2 3; do timeout 100 $B "$K" $S --benchmark-compare=0001 --benchmark-compare-fail=median:5% --benchmark-json=$OUT/r$i.json > $OUT/r$i.log 2>&1; echo "r$i rc=$?"; done
timeout 100 $B "$K" $S --bench-inject-slowdown=0.10 --benchmark-compare=0001 --benchmark-compare-fail=median:5% --benchmark-json=$OUT/r4.json > $OUT/r4.log 2>&1; echo "r4 (10% slower) rc=$?"
python benchmarks/report.py --spread $OUT/r1.json $OUT/r2.json $OUT/r3.json 2>&1 | tail -8
python benchmarks/report.py $OUT/r1.json $OUT/r4.json --fail-over 5 > $OUT/report.md 2>&1; echo "report rc=$?"; tail -6 $OUT/report.md
grep -h "passed\|failed\|regress" $OUT/r*.log | tail -8
