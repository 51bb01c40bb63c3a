#!/usr/bin/env bash
# Seventh session: every compiled ablation row in one process, fused-gemv-early last (as run 31; the five eager rows
# are launch-bound and unchanged since run 4, and the whole ablation does not fit one 10-minute command).
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 570 python scripts/perf_lab.py --runs 2 --log $OUT/ablation.log \
  --variants tensor-pos-static,rope,gate-up,graphs,gemv,fused,fused-eager,fused-pdl,fused-glue,fused-prefill-graph,fused-gemv-early \
  > /dev/null 2>$OUT/ablation.err; echo "ablation rc=$?"
grep -h "roofline\|^|" $OUT/ablation.log | cut -c1-220
tail -3 $OUT/ablation.err
