#!/usr/bin/env bash
# Prepared in the fifth session, not yet run (its device time was spent): sample the bimodal batch-1 decode
# (docs/PERF.md row 34) in fresh processes, each with empty compile caches of its own, and print what
# attn_mode_probe.py sees in each (attention inputs, Triton specialization keys). Then the same with the
# FX graph cache off (honoured since 37cebde) and with the two-kernel attention at batch 1.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
for i in 1 2 3 4; do
  echo "### process $i, empty caches of its own"
  TRITON_CACHE_DIR=/tmp/p$i/triton TORCHINDUCTOR_CACHE_DIR=/tmp/p$i/inductor timeout 100 \
    python scripts/attn_mode_probe.py 2>/dev/null | cut -c1-1000
done
echo "### FX graph cache off, process 1's caches otherwise"
TORCHINDUCTOR_FX_GRAPH_CACHE=0 TRITON_CACHE_DIR=/tmp/p1/triton TORCHINDUCTOR_CACHE_DIR=/tmp/p1/inductor \
  timeout 100 python scripts/attn_mode_probe.py 2>/dev/null | head -3 | cut -c1-300
echo "### two-kernel attention at batch 1, process 1's caches"
TRITON_CACHE_DIR=/tmp/p1/triton TORCHINDUCTOR_CACHE_DIR=/tmp/p1/inductor timeout 100 python scripts/perf_lab.py \
  --variants fused-prefill-graph~attention_one_launch,fused-prefill-graph --runs 3 --breakdown 2>/dev/null \
  | grep "prefill .* ms\|tok/s (best" | cut -c1-160
