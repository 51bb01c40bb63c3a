#!/usr/bin/env bash
# Ran at commit 0bd36c8; what it tries (--counter-strides, ATTN_COUNTER_STRIDE) was removed after it (docs/PERF.md row 38), so it runs only there.
# Sixth session, fifth call. Run 47: the judged compare with cold caches decoded in the slow mode (251.0 tok/s,
# 84.1 %), and so did a probe process after it (3.878 ms/step). Suspect: the 320 arrival atomics of each layer's
# one-launch attention queue on one 128-byte L2 line (32 int32 counters side by side). Now each head's counter
# has its own line (model.ATTN_COUNTER_STRIDE = 32). Judged compares and perf_lab processes alternate; perf_lab
# also reallocates the counters at stride 1 and 32 in turn inside its process.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
for i in 1 2; do
  timeout 200 python run_llama.py --model random:llama-7b --compare --output $OUT/compare$i.csv > $OUT/compare$i.log 2>&1
  echo "compare $i rc=$?"; grep "^roofline\|^| llama_fast\|^| transformers static" $OUT/compare$i.log | cut -c1-200
  timeout 120 python scripts/perf_lab.py --variants fused-prefill-graph --runs 3 --breakdown \
    --counter-strides 1,32,1,32 2>/dev/null | grep "prefill .* ms\|tok/s (best\|counter stride\|# roofline" | cut -c1-200
done
echo "mutation-analysis warnings: $(grep -c 'assuming every input is mutated' $OUT/compare*.log)"
