#!/usr/bin/env bash
# Ran at commit 2232dee (run 63). Its per-kernel flags pdl_qkv_early / pdl_attention_early were folded into
# ForwardOptions.pdl_gemv_early (variant fused-gemv-early) afterwards.
# Seventh session, third call: the residual GEMVs now pinned at BK 1024 / 8 warps (run 62). Early PDL triggers for
# one kernel each (ForwardOptions.pdl_qkv_early: the attention's K/V loads under the wqkv GEMV's last wave;
# pdl_attention_early: wo's first tiles under the attention's compute and combine), alternating in one process;
# then attention tiles under the qkv early trigger (CONFIG_TRIALS_5).
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
source "$(dirname "$0")/lab_lib.sh"
nvidia-smi -L
V=fused-prefill-graph; Q=$V+pdl_qkv_early; A=$V+pdl_attention_early; QA=$V+pdl_qkv_early+pdl_attention_early
timeout 330 python scripts/perf_lab.py --variants $V,$Q,$A,$QA,$V,$Q,$A,$QA --runs 3 --breakdown --check \
  --log $OUT/ab.log > $OUT/ab.out 2>&1; echo "ab rc=$?"
grep -h "prefill .* ms\|tok/s (best\|# roofline\|teacher\|check" $OUT/ab.log | cut -c1-200
tail -3 $OUT/ab.out
config_trials $Q 5 200
