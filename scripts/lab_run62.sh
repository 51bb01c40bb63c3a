#!/usr/bin/env bash
# Seventh session, second call: the residual GEMVs (wo, w2) at BLOCK_K 1024 with 8 warps in the real step
# (CONFIG_TRIALS_4), one process, pinned first and again.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
source "$(dirname "$0")/lab_lib.sh"
nvidia-smi -L
config_trials fused-prefill-graph 4
