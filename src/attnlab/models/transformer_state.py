"""What the Transformer's decoder carries between steps (TransformerState, reordered by beam search), and
the checks of its token inputs. Place in the layering: models (imports attnlab.layers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnlab.layers.kv_cache import KVCache


@dataclass
class TransformerState:
    """What the decoder carries between steps. `reorder` follows beam search's parent pointers.

    The source side (memory, src_mask, memory_kv) is held once per source sentence; decoder row r
    reads source r // group. Beam search keeps a sentence's K beams as K consecutive rows, so they
    share one copy of the encoder output and of the cross-attention keys/values (attending to it as
    K queries of one sentence), and following parent pointers within a sentence copies nothing on the
    source side. Only the self-attention caches, one per row, are reordered.
    """

    memory: Tensor  # (n_sources, S, d_model)
    src_mask: Tensor  # (n_sources, 1, 1, S)
    caches: list[KVCache] | None = None  # self-attention keys/values per decoder layer, one row per hypothesis
    memory_kv: list[tuple[Tensor, Tensor]] | None = None  # cross-attention keys/values per layer, per source
    group: int = 1  # decoder rows per source
    fast_epoch: int = 0  # attnlab.layers.onednn: prepacked weights are re-checked once per decode
    src_lengths: Tensor | None = None  # (n_sources,) real tokens per source when they are a prefix of the row
    step_plan: Any = None  # attnlab.models.transformer_step: this decode's prepacked weights (False: not served)

    @property
    def batch_size(self) -> int:
        return self.memory.size(0) * self.group

    def reorder(self, index: Tensor) -> "TransformerState":
        """Row i of the new batch continues old row index[i]."""
        sources = torch.div(index, self.group, rounding_mode="floor")  # (R',) source of each new row
        pick, group = sources, 1
        if index.numel():
            kept, counts = torch.unique_consecutive(sources, return_counts=True)
            if bool((counts == counts[0]).all()):  # contiguous, equal blocks: keep one copy per block
                pick, group = kept, int(counts[0])
        n = self.memory.size(0)
        if not (pick.numel() == n and torch.equal(pick, torch.arange(n, device=pick.device))):
            self.memory = self.memory.index_select(0, pick)
            self.src_mask = self.src_mask.index_select(0, pick)
            if self.src_lengths is not None:
                self.src_lengths = self.src_lengths.index_select(0, pick)
            if self.memory_kv is not None:
                self.memory_kv = [(k.index_select(0, pick), v.index_select(0, pick)) for k, v in self.memory_kv]
        self.group = group
        if self.caches is not None:
            for cache in self.caches:
                cache.reorder(index)
        return self

    def memory_per_row(self) -> tuple[Tensor, Tensor]:
        """memory (R, S, d_model) and src_mask (R, 1, 1, S), one per decoder row."""
        if self.group == 1:
            return self.memory, self.src_mask
        return self.memory.repeat_interleave(self.group, 0), self.src_mask.repeat_interleave(self.group, 0)


def prefix_lengths(key_mask: Tensor) -> Tensor | None:
    """For a key mask (B, 1, 1, S), True = real: the number of real keys per row (B,), or None unless
    they are a prefix of every row (padding at the end, as attnlab pads)."""
    b, s = key_mask.size(0), key_mask.size(-1)
    mask = key_mask.reshape(b, s)
    lengths = mask.sum(dim=-1)
    prefix = torch.arange(s, device=mask.device) < lengths[:, None]
    return lengths if torch.equal(mask, prefix) else None


def check_tokens(name: str, tokens: Tensor, vocab_size: int) -> None:
    """Raise a one-line ValueError if `tokens` is not a (batch, length) tensor of ids in [0, vocab_size)."""
    if not isinstance(tokens, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must hold integer token ids (int64), got dtype {tokens.dtype}")
    if tokens.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, length), got shape {tuple(tokens.shape)}")
    if tokens.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(tokens.shape)}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name} has token ids outside [0, {vocab_size}): min {lo}, max {hi} (vocabulary mismatch?)")
