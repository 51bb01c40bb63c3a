#!/usr/bin/env bash
# Seventh session: the judged compare twice at the final code on another fresh machine (a third host for
# fused-gemv-early), clocks sampled.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
nvidia-smi --query-gpu=timestamp,clocks.sm,temperature.gpu,power.draw,clocks_event_reasons.active \
  --format=csv,noheader -lms 200 > $OUT/smi.csv 2>&1 &
SMI=$!
for i in 1 2; do
  timeout 170 python run_llama.py --model random:llama-7b --compare --output $OUT/compare$i.csv > $OUT/compare$i.log 2>&1
  echo "compare $i rc=$?"; grep "^model\|^roofline\|^|" $OUT/compare$i.log | cut -c1-200
done
kill $SMI
awk -F', ' '$4+0 > 400 {n++; s[int($2/20)*20]++} END {for (k in s) print "SM ~" k ": " s[k] " samples"; print n " samples over 400 W"}' $OUT/smi.csv
