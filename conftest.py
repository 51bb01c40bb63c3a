"""Shared by tests/ and benchmarks/: never touch the network, restore global torch state after each test."""
import os

import pytest


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _restore_torch_state():
    import torch

    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
