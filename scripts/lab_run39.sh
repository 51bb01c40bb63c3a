#!/usr/bin/env bash
# Fifth session: run 38 showed that two comment lines above use_pdl (no code change) slow the batch-1 decode by
# 70 us/step: the kernels' source layout changes the binary. Triton puts line info into the LLVM IR and the
# PTX; does TRITON_DISABLE_LINE_INFO=1 make the layout irrelevant, and is that the fast or the slow binary?
# Trees (carried in .lab): A = cf30d98, B = A + two comment lines, head = HEAD. Each process has its own cold
# Triton and Inductor caches (the knob may not be part of Triton's cache key).
export PYTHONUNBUFFERED=1
nvidia-smi -L
for cfg in A:0 B:0 head:0 A:1 B:1 head:1; do
  tree=${cfg%:*}; noli=${cfg#*:}
  c=/tmp/cache_${tree}_$noli; mkdir -p $c
  (cd .lab/$tree && TRITON_DISABLE_LINE_INFO=$noli TRITON_CACHE_DIR=$c/triton TORCHINDUCTOR_CACHE_DIR=$c/inductor \
    LLAMA_FAST_COMMIT=$tree PYTHONPATH=. timeout 100 python scripts/perf_lab.py --variants fused-prefill-graph \
    --runs 3 --breakdown --log $OUT/${tree}_noline$noli.log > /dev/null 2>&1; echo "$tree TRITON_DISABLE_LINE_INFO=$noli rc=$?")
  grep -h "prefill .* ms\|tok/s (best" $OUT/${tree}_noline$noli.log | tail -2 | sed "s/^/$tree noline=$noli: /" | cut -c1-160
done
