#!/usr/bin/env bash
# Sixth session, eleventh call: the default benchmark suite at the final code (the compiled batch > 1 decode now
# launches the plain-jit split attention kernel), with its summary.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 420 python -m pytest benchmarks/ -p no:xdist -p no:cacheprovider --benchmark-json=$OUT/suite.json \
  > $OUT/suite.log 2>&1; echo "suite rc=$?"
python benchmarks/report.py --summary $OUT/suite.json > $OUT/suite_summary.md 2>&1
echo "mutation-analysis warnings: $(grep -c 'assuming every input is mutated' $OUT/suite.log)"
tail -1 $OUT/suite.log; cat $OUT/suite_summary.md
