#!/usr/bin/env bash
# Prepared in the fourth session, not yet run (its device time was spent). Needs 2 GPUs (nvidia-h100-x2 or
# nvidia-h200-x2); one GPU per process, both in parallel:
#  GPU 0: batch 16 in one process, fused vs fused-prefill-graph (row 30: compiled glue and one-launch
#         attention now serve batch 1 only; before, fused-prefill-graph ran 12 % below fused at batch 16),
#         then the prompt sweep of FASTEST against transformers static (llama2-7b shape: prompt 4000 fits);
#  GPU 1: the batch sweep 1-64 of FASTEST against transformers static at the seed workload.
# Then: docs/PERF.md sweep tables, CSVs under docs/runs, plots (`--sweep` writes them next to the CSV).
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi -L
(
  export CUDA_VISIBLE_DEVICES=0
  timeout 100 python scripts/perf_lab.py --batch 16 --variants fused,fused-prefill-graph --runs 2 --breakdown \
    --log $OUT/b16.log > /dev/null 2>&1; echo "b16 rc=$?" >> $OUT/status
  timeout 320 python run_llama.py --model random:llama2-7b --compare --compare-variants fused-prefill-graph,hf-static \
    --sweep length --prompt-lengths 100,200,400,800,1600,4000 --new-tokens 96 --warmup-runs 1 --num-runs 2 \
    --output $OUT/sweep_length.csv > $OUT/sweep_length.log 2>&1; echo "length rc=$?" >> $OUT/status
) &
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 440 python run_llama.py --model random:llama-7b --compare --compare-variants fused-prefill-graph,hf-static \
    --sweep batch --batch-sizes 1,2,4,8,16,32,64 --warmup-runs 1 --num-runs 2 \
    --output $OUT/sweep_batch.csv > $OUT/sweep_batch.log 2>&1; echo "batch rc=$?" >> $OUT/status
) &
wait
cat $OUT/status
grep -h "tok/s" $OUT/b16.log | cut -c1-200
grep -h "^|" $OUT/sweep_batch.log $OUT/sweep_length.log | head -40
