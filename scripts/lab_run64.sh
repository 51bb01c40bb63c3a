#!/usr/bin/env bash
# Ran at commit b716015 (run 64). Its per-edge flags were folded into ForwardOptions.pdl_gemv_early (variant
# fused-gemv-early) afterwards.
# Seventh session, fourth call: run 63 had the wqkv kernel's early trigger 1.5 % faster and the attention's 6 %
# slower. Row 18's "every kernel early" (-2 %) included the attention's edge, so each GEMV -> GEMV edge is tried
# alone on top of pdl_qkv_early (wo -> w13, w13 -> w2, w2 -> next wqkv), then all three, alternating in one process.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
Q=fused-prefill-graph+pdl_qkv_early
timeout 400 python scripts/perf_lab.py --variants $Q,$Q+pdl_wo_early,$Q+pdl_w13_early,$Q+pdl_w2_early,$Q+pdl_wo_early+pdl_w13_early+pdl_w2_early,$Q,$Q+pdl_wo_early,$Q+pdl_w13_early,$Q+pdl_w2_early,$Q+pdl_wo_early+pdl_w13_early+pdl_w2_early \
  --runs 3 --breakdown --log $OUT/ab.log > $OUT/ab.out 2>&1; echo "ab rc=$?"
grep -h "prefill .* ms\|# roofline" $OUT/ab.log | cut -c1-200
tail -3 $OUT/ab.out
