#!/usr/bin/env bash
# Run 27: run 26's process put fused-prefill-graph at floor + 90 MB once its CUDA-graph pool is counted (target
# + 64), and the MLP halves saved only 6 MB. Now one side stream warms up and captures (one cuBLAS workspace,
# outside the pool). One process: fused-glue, fused-prefill-graph at 512 / 384 / 256-token chunks, the graph
# without the MLP halves: speed, peaks, and what the private pool's segments hold.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 200 python scripts/perf_lab.py --breakdown --runs 3 --log $OUT/mem.log \
  --variants fused-glue,fused-prefill-graph,fused-prefill-graph@384,fused-prefill-graph@256,fused-glue+graphed_prefill \
  > /dev/null 2>$OUT/mem.err; echo "mem rc=$?"
grep -h "fused" $OUT/mem.log | grep -v "^    " | cut -c1-400 | head -60
tail -3 $OUT/mem.err
