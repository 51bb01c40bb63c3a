#!/usr/bin/env bash
# Fifth session: why fused-prefill-graph still decodes batch 16 slower than fused after row 30's batch-1 gating
# (run 31, one process: 1820.3 vs 1710.9 tok/s; decode 6.903 vs 7.423 ms/step). One process, one GPU,
# fused first and last (drift), each flag of fused-prefill-graph added to fused or removed alone.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 500 python scripts/perf_lab.py --batch 16 --runs 2 --breakdown --log $OUT/b16.log \
  --variants fused,fused-prefill-graph,fused+graphed_prefill,fused+split_mlp,fused-glue,fused-prefill-graph~graphed_prefill,fused \
  > /dev/null 2>$OUT/b16.err; echo "b16 rc=$?"
grep -h "prefill .* ms\|tok/s" $OUT/b16.log | cut -c1-160
tail -3 $OUT/b16.err
