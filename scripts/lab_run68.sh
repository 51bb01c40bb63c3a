#!/usr/bin/env bash
# Seventh session: the batch sweep 1-64 of FASTEST (fused-gemv-early) against transformers static at the seed
# workload, one process (the plot comes back too).
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 560 python run_llama.py --model random:llama-7b --compare --compare-variants fused-gemv-early,hf-static \
  --sweep batch --batch-sizes 1,2,4,8,16,32,64 --warmup-runs 1 --num-runs 2 \
  --output $OUT/sweep_batch.csv > $OUT/sweep_batch.log 2>&1; echo "batch rc=$?"
echo "mutation-analysis warnings: $(grep -c 'assuming every input is mutated' $OUT/sweep_batch.log)"
grep -h "^| llama\|^| trans\|roofline" $OUT/sweep_batch.log | cut -c1-220
