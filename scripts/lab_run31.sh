#!/usr/bin/env bash
# Fifth session, one 4-GPU host (nvidia-h200-x4), one process per GPU, all four in parallel:
#  GPU 0: batch 16 in one process, fused vs fused-prefill-graph (row 30's batch-1 gating), the CUDA
#         no-recompile tests on the post-review code, then the prompt sweep of FASTEST vs transformers static
#         (llama2-7b shape, 96 new tokens: prompt 4000 fits);
#  GPU 1: the batch sweep 1-64 of FASTEST vs transformers static at the seed workload;
#  GPU 2: the default benchmark suite end to end (what the gate runs);
#  GPU 3: every compiled ablation row in one process (perf_lab; the eager rows are launch-bound and unchanged
#         since run 4, and the whole ablation does not fit one 10-minute command).
# Logs go to a work folder and come back as one archive (the device tool returns at most 8 files).
export PYTHONPATH=. LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown} PYTHONUNBUFFERED=1
W=/tmp/run31; mkdir -p $W
nvidia-smi -L | tee $W/gpus
(
  export CUDA_VISIBLE_DEVICES=0
  timeout 100 python scripts/perf_lab.py --batch 16 --variants fused,fused-prefill-graph --runs 2 --breakdown \
    --log $W/b16.log > /dev/null 2>$W/b16.err; echo "b16 rc=$?" >> $W/status
  timeout 80 python -m pytest -q -p no:cacheprovider -rA tests/test_compile.py -k cuda \
    > $W/tests.log 2>&1; echo "tests rc=$?" >> $W/status
  timeout 340 python run_llama.py --model random:llama2-7b --compare --compare-variants fused-prefill-graph,hf-static \
    --sweep length --prompt-lengths 100,200,400,800,1600,4000 --new-tokens 96 --warmup-runs 1 --num-runs 2 \
    --output $W/sweep_length.csv > $W/sweep_length.log 2>&1; echo "length rc=$?" >> $W/status
) &
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 530 python run_llama.py --model random:llama-7b --compare --compare-variants fused-prefill-graph,hf-static \
    --sweep batch --batch-sizes 1,2,4,8,16,32,64 --warmup-runs 1 --num-runs 2 \
    --output $W/sweep_batch.csv > $W/sweep_batch.log 2>&1; echo "batch rc=$?" >> $W/status
) &
(
  export CUDA_VISIBLE_DEVICES=2
  timeout 530 python -m pytest benchmarks/ -p no:xdist -p no:cacheprovider --benchmark-json=$W/suite.json \
    > $W/suite.log 2>&1; echo "suite rc=$?" >> $W/status
  python benchmarks/report.py --summary $W/suite.json > $W/suite_summary.md 2>&1
) &
(
  export CUDA_VISIBLE_DEVICES=3
  timeout 530 python scripts/perf_lab.py --runs 2 --log $W/ablation.log \
    --variants tensor-pos-static,rope,gate-up,graphs,gemv,fused,fused-eager,fused-pdl,fused-glue,fused-prefill-graph \
    > /dev/null 2>$W/ablation.err; echo "ablation rc=$?" >> $W/status
) &
wait
tar czf $OUT/run31.tgz -C $W .
cat $W/status
grep -h "tok/s\|fused" $W/b16.log | cut -c1-200 | head -12
grep -E "PASSED|FAILED|ERROR|passed|failed|^E " $W/tests.log | head -12
grep -h "^|" $W/sweep_batch.log $W/sweep_length.log | head -40
tail -2 $W/suite.log; cat $W/suite_summary.md
grep -h "fused\|graphs\|gemv\|rope\|gate-up\|tensor-pos\|roofline" $W/ablation.log | grep -v "^    " | head -24
