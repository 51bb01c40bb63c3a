#!/usr/bin/env bash
# Seventh session, sixth call: the CUDA compile tests (fused-gemv-early is now FASTEST: exact fp32 tokens against
# eager, no recompile over four prompt lengths, one decode-graph capture) and the default benchmark suite.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 220 python -m pytest -q -p no:cacheprovider tests/test_compile.py -rf > $OUT/test_compile.log 2>&1
echo "test_compile rc=$?"; grep -B5 -A30 "^_____" $OUT/test_compile.log | head -60 | cut -c1-250; tail -2 $OUT/test_compile.log
timeout 340 python -m pytest benchmarks/ -p no:xdist -p no:cacheprovider --benchmark-json=$OUT/suite.json \
  > $OUT/suite.log 2>&1; echo "suite rc=$?"
python benchmarks/report.py --summary $OUT/suite.json > $OUT/suite_summary.md 2>&1
echo "mutation-analysis warnings: $(grep -c 'assuming every input is mutated' $OUT/suite.log)"
tail -1 $OUT/suite.log; cat $OUT/suite_summary.md
