"""Key/value cache for incremental decoding (gpt-fast style: preallocated, non-persistent buffers).

Self-attention keys/values grow one step at a time; the cache is held by the decoding state,
never by the model, so several decodes can run side by side and beam search can reorder it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class KVCache(nn.Module):
    def __init__(self, batch_size: int, n_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | None = None):
        super().__init__()
        shape = (batch_size, n_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.size(2)

    def update(self, input_pos: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, t, dh) at positions input_pos..input_pos+t-1; return keys/values so far."""
        end = input_pos + k.size(2)
        if end > self.capacity:  # grow geometrically rather than fail on a long output
            self._grow(max(end, 2 * self.capacity))
        if k.dtype != self.k.dtype:  # e.g. first step under autocast
            self.k, self.v = self.k.to(k.dtype), self.v.to(k.dtype)
        self.k[:, :, input_pos:end] = k
        self.v[:, :, input_pos:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def _grow(self, new_len: int) -> None:
        b, h, t, d = self.k.shape
        k = self.k.new_zeros(b, h, new_len, d)
        v = self.v.new_zeros(b, h, new_len, d)
        k[:, :, :t] = self.k
        v[:, :, :t] = self.v
        self.k, self.v = k, v

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search: follow each surviving hypothesis' parent)."""
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)
