#!/usr/bin/env bash
# Fifth session, final code: the judged compare on a fresh machine (cold caches: its warm-up is the cold one),
# then the default suite after row 32's fix (its b4 / b16 cases ran with the bug in run 31).
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 200 python run_llama.py --model random:llama-7b --compare --output $OUT/compare.csv > $OUT/compare.log 2>&1
echo "compare rc=$?"
timeout 330 python -m pytest benchmarks/ -p no:xdist -p no:cacheprovider --benchmark-json=$OUT/suite.json \
  > $OUT/suite.log 2>&1; echo "suite rc=$?"
python benchmarks/report.py --summary $OUT/suite.json > $OUT/suite_summary.md 2>&1
grep "^model\|^roofline\|^|" $OUT/compare.log
echo "mutation-analysis warnings: $(grep -c 'assuming every input is mutated' $OUT/compare.log $OUT/suite.log)"
tail -1 $OUT/suite.log; cat $OUT/suite_summary.md
