#!/usr/bin/env bash
# Ran at commit 8b2a841 (run 61). The PIPELINE option and CONFIG_TRIALS_3 were removed afterwards (slower in every
# form, docs/PERF.md row 45); fused_bench.py --sweep-configs still sweeps the other dimensions.
# Seventh session, first call: weight tiles loaded ahead of their use in the decode GEMVs (kernels PIPELINE; Triton
# emits no cp.async for these loads, so num_stages never pipelined them). The GEMV forms alone over a grid with
# PIPELINE 0/1/2, then the real step under CONFIG_TRIALS_3 in one process (pinned first and again).
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
nvidia-smi --query-gpu=timestamp,clocks.sm,temperature.gpu,power.draw,clocks_event_reasons.active \
  --format=csv,noheader -lms 200 > $OUT/smi.csv 2>&1 &
SMI=$!
timeout 270 python scripts/fused_bench.py --sweep-configs --gemv-only > $OUT/sweep.log 2>&1; echo "sweep rc=$?"
grep -v "^      .*: \(OutOfResources\|Error\)" $OUT/sweep.log | grep "pinned\|best\|P0\|us " | cut -c1-150
timeout 280 python scripts/perf_lab.py --variants fused-prefill-graph --breakdown --config-trials fused-prefill-graph \
  --trial-set 3 --log $OUT/trials.log > $OUT/trials.out 2>&1; echo "trials rc=$?"
grep -h "prefill .* ms\|tok/s (best\|# roofline\|trial" $OUT/trials.log | cut -c1-200
tail -3 $OUT/trials.out
kill $SMI
awk -F', ' '$4+0 > 400 {n++; s[int($2/20)*20]++} END {for (k in s) print "SM ~" k ": " s[k] " samples"; print n " samples over 400 W"}' $OUT/smi.csv
