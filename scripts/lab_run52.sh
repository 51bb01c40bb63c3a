#!/usr/bin/env bash
# Sixth session, ninth call: the CUDA compile tests at the final kernels (run 51: one case failed, next to the
# lab's USE_DOT code, since removed), with the failure's report; then the judged compare twice.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
timeout 250 python -m pytest -q -p no:cacheprovider tests/test_compile.py -rf 2>&1 > $OUT/test_compile.log
grep -B5 -A40 "^_____\|Error\|assert" $OUT/test_compile.log | head -120 | cut -c1-250; tail -3 $OUT/test_compile.log
for i in 1 2; do
  timeout 200 python run_llama.py --model random:llama-7b --compare --output $OUT/compare$i.csv > $OUT/compare$i.log 2>&1
  echo "compare $i rc=$?"; grep "^model\|^roofline\|^|" $OUT/compare$i.log | cut -c1-200
done
echo "mutation-analysis warnings: $(grep -c 'assuming every input is mutated' $OUT/compare*.log)"
