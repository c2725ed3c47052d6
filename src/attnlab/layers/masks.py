"""Attention masks. One convention everywhere: bool, True = may attend (as F.scaled_dot_product_attention).

Masks are broadcast against attention scores of shape (B, n_heads, T_query, T_key).

Place in the layering: layers; imports only from io and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import torch
from torch import Tensor


def padding_mask(tokens: Tensor, pad_id: int) -> Tensor:
    """(B, S) token ids -> (B, 1, 1, S) bool, True where the key is a real token."""
    return (tokens != pad_id)[:, None, None, :]


def causal_mask(size: int, device: torch.device | None = None) -> Tensor:
    """(T, T) bool lower triangle: query t may attend to keys 0..t, never to the future."""
    return torch.ones(size, size, dtype=torch.bool, device=device).tril_()


def decoder_self_mask(tgt: Tensor, pad_id: int) -> Tensor:
    """(B, T) target ids -> (B, 1, T, T): causal and no padded keys. The first token, the decoder start,
    is always real: Marian's models start decoding from the pad id."""
    keys = padding_mask(tgt, pad_id).clone()
    keys[..., 0] = True
    return keys & causal_mask(tgt.size(1), tgt.device)
