#!/usr/bin/env bash
# Fifth session: runs 39-40 found that batch-1 speed depends on the compile caches a process finds (fresh:
# 3.80 ms/step; caches warmed by this machine's earlier runs of other trees: 3.88, all of it in the decode
# attention kernel). Here: the judged compare in a process with empty caches of its own (a first run on a new
# runner), then perf_lab twice more on those same caches (does a cache this code warmed itself stay fast?).
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=/tmp/own/triton TORCHINDUCTOR_CACHE_DIR=/tmp/own/inductor
nvidia-smi -L
timeout 200 python run_llama.py --model random:llama-7b --compare --output $OUT/compare.csv > $OUT/compare.log 2>&1
echo "compare rc=$?"
grep "^model\|^roofline\|^|" $OUT/compare.log
for i in 1 2; do
  timeout 60 python scripts/perf_lab.py --variants fused-prefill-graph --runs 3 --breakdown 2>/dev/null \
    | grep "prefill .* ms\|tok/s (best" | sed "s/^/own cache, again $i: /" | cut -c1-170
done
