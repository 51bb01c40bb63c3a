#!/usr/bin/env bash
# Ran at commit 7355385; what it tries was removed after it (docs/PERF.md row 36), so it runs only there.
# Sixth session, second call. Run 44: the span form of the attention lost (removed). Now: the chunk form with
# its K/V loads not waiting for the mask (KV_UNMASKED), alone (attn_bench.py) and in the step (perf_lab trial
# set 3, one process); the interpreter kernel test with its output (it failed in run 44); the bimodality probe
# in two processes with empty caches of their own.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
timeout 120 python scripts/attn_bench.py 2>&1 | tail -40
timeout 200 python scripts/perf_lab.py --variants fused-prefill-graph --runs 3 --breakdown --config-trials \
  fused-prefill-graph --trial-set 3 2>/dev/null | grep "prefill .* ms\|tok/s (best\|trial\|# roofline" | cut -c1-200
timeout 60 python -m pytest -q -x tests/test_kernels.py 2>&1 | grep -v "^ *$" | tail -25 | cut -c1-300
for i in 1 2; do
  echo "### probe process $i, empty caches of its own"
  TRITON_CACHE_DIR=/tmp/p$i/triton TORCHINDUCTOR_CACHE_DIR=/tmp/p$i/inductor timeout 90 \
    python scripts/attn_mode_probe.py 2>/dev/null | cut -c1-1200
done
