#!/usr/bin/env bash
# Ran at commit 790424d; what it tries (USE_DOT) was removed after it (docs/PERF.md row 40), so it runs only there.
# Sixth session, eighth call. Run 50: on a host decoding at 3.76 ms/step the SM clock held 1980 MHz through the
# decode (~600 W), after a burn too; the slow mode was not reproduced there. Now: the attention's two products
# on tensor cores (USE_DOT: q and p repeated over 16 rows, mma.sync), alone and in the step; the CUDA tests.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
timeout 100 python scripts/attn_bench.py 2>&1 | tail -26
timeout 200 python scripts/perf_lab.py --variants fused-prefill-graph --runs 3 --breakdown --config-trials \
  fused-prefill-graph --trial-set 3 2>/dev/null | grep "prefill .* ms\|tok/s (best\|trial\|# roofline" | cut -c1-200
timeout 250 python -m pytest -q -p no:cacheprovider tests/test_compile.py 2>&1 | tail -4
