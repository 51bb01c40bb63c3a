#!/usr/bin/env bash
# Sixth session: the slow level (3.88 ms/step) showed up in run_llama --compare processes, which measure
# transformers (default, then static, auto-compiled) before llama_fast in the same process, in the suite's seed
# case (after three other cases), and in perf_lab processes that followed a compare on the same host; never in a
# perf_lab process that ran first. Three processes on one host: ours alone; transformers static then ours (as
# --compare does); ours alone again.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
for v in fused-prefill-graph hf-static,fused-prefill-graph fused-prefill-graph; do
  echo "### perf_lab --variants $v"
  timeout 200 python scripts/perf_lab.py --variants $v --runs 3 --breakdown 2>/dev/null \
    | grep "prefill .* ms\|tok/s (best\|# roofline" | cut -c1-200
done
