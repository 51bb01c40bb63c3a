#!/usr/bin/env bash
# Device run 4: the seed table (ablation) and the compare table on random:llama-7b fp16, seed workload.
export PYTHONPATH=.
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 400 python run_llama.py --model random:llama-7b --ablation --warmup-runs 1 --num-runs 2 --output $OUT/ablation.csv > $OUT/ablation.md 2>$OUT/ablation.err
tail -n 16 $OUT/ablation.md
timeout 170 python run_llama.py --model random:llama-7b --compare --warmup-runs 1 --num-runs 3 --output $OUT/compare.csv > $OUT/compare.md 2>$OUT/compare.err
tail -n 8 $OUT/compare.md; tail -n 3 $OUT/ablation.err $OUT/compare.err
