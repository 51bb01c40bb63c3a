#!/usr/bin/env bash
# Ran at commit 2a201e7 (run 72). ACC_1D and CONFIG_TRIALS_6 were removed afterwards (docs/PERF.md row 49).
# Seventh session: the decode GEMVs with a (BLOCK_N,) accumulator (ACC_1D: fewer registers, more programs per SM)
# in the real step, trial set 6 on fused-gemv-early, one process, pinned first and again.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
source "$(dirname "$0")/lab_lib.sh"
nvidia-smi -L
config_trials fused-gemv-early 6
