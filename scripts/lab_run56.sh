#!/usr/bin/env bash
# Sixth session, thirteenth call: one-launch against two-kernel decode attention at batch 1, alternating in one
# process (run 40 had the two-kernel form 1.2 % faster in a slow process; row 16 had one launch 0.4 % ahead
# earlier), with the clocks sampled, to see whether the two-kernel form raises the slow level without costing
# the fast one.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
nvidia-smi --query-gpu=timestamp,clocks.sm,temperature.gpu,power.draw,clocks_event_reasons.active \
  --format=csv,noheader -lms 100 > $OUT/smi.csv 2>&1 &
SMI=$!
V=fused-prefill-graph; T=fused-prefill-graph~attention_one_launch
timeout 300 python scripts/perf_lab.py --variants $V,$T,$V,$T --runs 3 --breakdown 2>/dev/null \
  | grep "prefill .* ms\|tok/s (best\|# roofline" | cut -c1-200
kill $SMI
awk -F', ' '$4+0 > 400 {n++; s[$2]++} END {for (k in s) print "SM " k ": " s[k] " samples"; print n " samples over 400 W"}' $OUT/smi.csv
