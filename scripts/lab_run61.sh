#!/usr/bin/env bash
# Ran at commit 8b2a841 (run 61). The PIPELINE option and CONFIG_TRIALS_3 were removed afterwards (slower in every
# form, docs/PERF.md row 45); fused_bench.py --sweep-configs still sweeps the other dimensions.
# Seventh session, first call: weight tiles loaded ahead of their use in the decode GEMVs (kernels PIPELINE; Triton
# emits no cp.async for these loads, so num_stages never pipelined them). The GEMV forms alone over a grid with
# PIPELINE 0/1/2, then the real step under CONFIG_TRIALS_3 in one process (pinned first and again).
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
source "$(dirname "$0")/lab_lib.sh"
nvidia-smi -L
clocks_start
timeout 270 python scripts/fused_bench.py --sweep-configs --gemv-only > $OUT/sweep.log 2>&1; echo "sweep rc=$?"
grep -v "^      .*: \(OutOfResources\|Error\)" $OUT/sweep.log | grep "pinned\|best\|P0\|us " | cut -c1-150
config_trials fused-prefill-graph 3
clocks_summary
