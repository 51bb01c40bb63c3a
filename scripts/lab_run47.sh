#!/usr/bin/env bash
# Ran at commit af51df7; its graph dump (PROBE_GRAPH_DIR) wrote no file there and was removed afterwards.
# Sixth session, fourth call: the judged compare at the current code on a fresh machine (cold caches), again on
# its warm caches, then the bimodality probe with the decode graph dumped as DOT (PROBE_GRAPH_DIR), to compare
# a fast and a slow process's graphs (extra nodes or lost programmatic edges around the attention kernel).
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
for i in 1 2; do
  timeout 200 python run_llama.py --model random:llama-7b --compare --output $OUT/compare$i.csv > $OUT/compare$i.log 2>&1
  echo "compare $i rc=$?"; grep "^roofline\|^|" $OUT/compare$i.log
done
PROBE_GRAPH_DIR=$OUT/graphs PROBE_TAG=warm timeout 120 python scripts/attn_mode_probe.py 2>&1 | grep -v "^_gemv" | cut -c1-900
echo "mutation-analysis warnings: $(grep -c 'assuming every input is mutated' $OUT/compare*.log)"
