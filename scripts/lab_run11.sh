#!/usr/bin/env bash
# Device run 11 (2 GPUs in parallel): GPU 0: the judged --compare at the seed workload, then the prompt sweep
# (llama2-7b shape: 4096 positions, so prompt 4000 + 96 new tokens fits); GPU 1: the batch sweep at the seed.
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-92bd980}
nvidia-smi -L
(
  export CUDA_VISIBLE_DEVICES=0
  timeout 170 python run_llama.py --model random:llama-7b --compare --warmup-runs 1 --num-runs 3 \
    --output $OUT/compare.csv > $OUT/compare.log 2>&1; echo "compare rc=$?" >> $OUT/status
  timeout 255 python run_llama.py --model random:llama2-7b --compare --compare-variants fused,hf-static \
    --sweep length --prompt-lengths 100,200,400,800,1600,4000 --new-tokens 96 --warmup-runs 1 --num-runs 2 \
    --output $OUT/sweep_length.csv > $OUT/sweep_length.log 2>&1; echo "length rc=$?" >> $OUT/status
) &
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 425 python run_llama.py --model random:llama-7b --compare --compare-variants fused,hf-static \
    --sweep batch --batch-sizes 1,2,4,8,16,32,64 --warmup-runs 1 --num-runs 2 \
    --output $OUT/sweep_batch.csv > $OUT/sweep_batch.log 2>&1; echo "batch rc=$?" >> $OUT/status
) &
wait
cat $OUT/status
grep -v "configurations\|it/s\|s/it" $OUT/compare.log | tail -12
