"""Static, preallocated KV cache: module buffers written at tensor positions."""
from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    def __init__(self, batch: int, n_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None):
        super().__init__()
        shape = (batch, n_kv_heads, max_seq_len, head_dim)  # (B, Hkv, S, D)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_seq_len(self) -> int:
        return self.k_cache.shape[2]

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, Hkv, T, D) at cache slots input_pos (T,); return the whole cache (B, Hkv, S, D).

        index_copy_ on a buffer keeps the write inside a CUDA graph (no host sync, no new shape)."""
        self.k_cache.index_copy_(2, input_pos, k)
        self.v_cache.index_copy_(2, input_pos, v)
        return self.k_cache, self.v_cache

    def update_slice(self, start: int, k: torch.Tensor, v: torch.Tensor):
        """The seed's path: write at a Python-int offset and return only the valid prefix (B, Hkv, start+T, D)."""
        end = start + k.shape[2]
        self.k_cache[:, :, start:end] = k
        self.v_cache[:, :, start:end] = v
        return self.k_cache[:, :, :end], self.v_cache[:, :, :end]
