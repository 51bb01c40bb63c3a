#!/usr/bin/env bash
# Seventh session, seventh call: the judged compare twice at the final code (PIPELINE removed, kernels as in runs
# 65-66) on a fresh machine, clocks sampled: does the margin hold on another host?
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
nvidia-smi --query-gpu=timestamp,clocks.sm,temperature.gpu,power.draw,clocks_event_reasons.active \
  --format=csv,noheader -lms 200 > $OUT/smi.csv 2>&1 &
SMI=$!
for i in 1 2; do
  timeout 170 python run_llama.py --model random:llama-7b --compare --output $OUT/compare$i.csv > $OUT/compare$i.log 2>&1
  echo "compare $i rc=$?"; grep "^model\|^roofline\|^|" $OUT/compare$i.log | cut -c1-200
done
timeout 100 python scripts/perf_lab.py --variants fused-prefill-graph,fused-gemv-early --runs 3 --breakdown \
  --log $OUT/ab.log > $OUT/ab.out 2>&1; echo "ab rc=$?"
grep -h "prefill .* ms\|# roofline" $OUT/ab.log | cut -c1-200
kill $SMI
awk -F', ' '$4+0 > 400 {n++; s[int($2/20)*20]++} END {for (k in s) print "SM ~" k ": " s[k] " samples"; print n " samples over 400 W"}' $OUT/smi.csv
