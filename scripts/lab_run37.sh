#!/usr/bin/env bash
# Fifth session: HEAD against HEAD without use_pdl's is_compiling check (.lab/nocheck, carried): run 36 put the
# batch-1 slowdown (3.80 -> 3.88 ms/step) on commit 21cc363, which added that check and nothing else.
export PYTHONUNBUFFERED=1
nvidia-smi -L
python -c "import torch, inspect; print(torch.__version__); print(inspect.getsource(torch.compiler.is_compiling))" | tail -8
for tree in head nocheck head nocheck; do
  dir=.; [ $tree = nocheck ] && dir=.lab/nocheck
  (cd $dir && LLAMA_FAST_COMMIT=$tree PYTHONPATH=. timeout 90 python scripts/perf_lab.py --variants fused-prefill-graph \
    --runs 3 --breakdown --log $OUT/$tree.log > /dev/null 2>&1; echo "$tree rc=$?")
  grep -h "prefill .* ms\|tok/s (best" $OUT/$tree.log | tail -2 | sed "s/^/$tree: /" | cut -c1-150
done
