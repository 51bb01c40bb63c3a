#!/usr/bin/env bash
# Ran at commit 606539a; what it tries was removed after it (docs/PERF.md row 37), so it runs only there.
# Sixth session, third call: L2 prefetch hints in the batch-1 decode step (perf_lab trial set 3, one process):
# the qkv kernel fetching this layer's K/V for the attention after it, the attention fetching the wo weights
# for the GEMV after it; then the interpreter kernel test's own traceback (it fails on this stack, run 45).
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
timeout 300 python scripts/perf_lab.py --variants fused-prefill-graph --runs 3 --breakdown --config-trials \
  fused-prefill-graph --trial-set 3 2>&1 | grep "prefill .* ms\|tok/s (best\|trial\|# roofline\|Error" | cut -c1-300
python - <<'PY' 2>&1 | tail -40 | cut -c1-300
import os, subprocess, sys
sys.path.insert(0, "tests")
import test_kernels as t
r = subprocess.run([sys.executable, "-c", "import sys\n" + t.CHECK, "float32"], capture_output=True, text=True,
                   env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=120)
print(r.stdout[-1500:]); print(r.stderr[-6000:])
PY
python -c "import triton, torch; print('triton', triton.__version__, 'torch', torch.__version__)"
