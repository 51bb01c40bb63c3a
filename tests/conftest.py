"""Shared fixtures for the core tests: tiny random configs, seeded random transformers models converted
through llama_fast's own converter, and the embedded SmolLM2 (ours and the transformers reference),
loaded once per session (once per xdist worker)."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from core_helpers import TINY_CONFIGS, fast_from_hf, make_hf
from llama_fast import LlamaConfig
from llama_fast.loading import EMBEDDED_INSTALL, EMBEDDED_PACKAGE


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
def smollm():
    """llama_fast's SmolLM2-135M (from the embedded GGUF, converted once), fp32 on CPU."""
    _require_embedded()
    import llama_fast

    return llama_fast.load_model("smollm2-135m", device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def smollm_hf():
    """The transformers reference over the same converted checkpoint, fp32, sdpa."""
    _require_embedded()
    from transformers import AutoModelForCausalLM

    from llama_fast.loading import resolve_checkpoint

    hf = AutoModelForCausalLM.from_pretrained(str(resolve_checkpoint("smollm2-135m")), dtype=torch.float32,
                                              attn_implementation="sdpa")
    return hf.eval().requires_grad_(False)


def pytest_configure(config):
    """Under xdist, split the cores between the workers: two workers each running torch's default
    all-core thread pool oversubscribe the CPU and slow the SmolLM2 tests down by 10x."""
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
