#!/usr/bin/env bash
# Seventh session: the judged compare twice at the final code on another fresh machine (a third host for
# fused-gemv-early), clocks sampled.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
source "$(dirname "$0")/lab_lib.sh"
nvidia-smi -L
clocks_start
judged_compares 2
clocks_summary
