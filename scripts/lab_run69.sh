#!/usr/bin/env bash
# Seventh session: the prompt sweep 100-4000 of FASTEST (fused-gemv-early) against transformers static, batch 1,
# llama2-7b shape (4096 positions), 96 new tokens, one process.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 560 python run_llama.py --model random:llama2-7b --compare --compare-variants fused-gemv-early,hf-static \
  --sweep length --prompt-lengths 100,200,400,800,1600,4000 --new-tokens 96 --warmup-runs 1 --num-runs 2 \
  --output $OUT/sweep_length.csv > $OUT/sweep_length.log 2>&1; echo "length rc=$?"
grep -h "^| llama\|^| trans\|roofline" $OUT/sweep_length.log | cut -c1-220
