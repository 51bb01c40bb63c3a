#!/usr/bin/env bash
# Fifth session: run 36 put a 70 us/step batch-1 slowdown on 21cc363 (use_pdl's compile check plus two comment
# lines); run 37 showed that removing the check at HEAD does not undo it. Trees (carried in .lab): A = cf30d98,
# B = cf30d98 + two comment lines above use_pdl's check (layout only), C = cf30d98 + the check (no comments).
export PYTHONUNBUFFERED=1
nvidia-smi -L
for tree in A B C A B C; do
  (cd .lab/$tree && LLAMA_FAST_COMMIT=$tree PYTHONPATH=. timeout 90 python scripts/perf_lab.py --variants fused-prefill-graph \
    --runs 3 --breakdown --log $OUT/$tree.log > /dev/null 2>&1; echo "$tree rc=$?")
  grep -h "prefill .* ms\|tok/s (best" $OUT/$tree.log | tail -2 | sed "s/^/$tree: /" | cut -c1-150
done
