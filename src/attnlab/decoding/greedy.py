"""Greedy decoding: at every step take the most probable next token."""
from __future__ import annotations

import torch
from torch import Tensor

from attnlab.decoding.protocol import Decodable, batch_size_of, eval_mode


@torch.no_grad()
def greedy(
    model: Decodable,
    src: Tensor,
    max_len: int,
    bos_id: int,
    eos_id: int,
    use_cache: bool = True,
    return_attention: bool = False,
    min_len: int = 0,
) -> Tensor | tuple[Tensor, Tensor]:
    """Decode src (B, S) -> generated tokens (B, T<=max_len), without BOS; each row ends at its EOS
    (included) and is padded with model.pad_id after it.

    With `return_attention`, also returns the attention of every generated token over the
    source, (B, T, L, H, S). EOS is not chosen before `min_len` tokens (as in beam_search).
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    with eval_mode(model):
        b = batch_size_of(src)
        state = model.init_decode(src, max_len=max_len + 1, use_cache=use_cache)
        device = src.device if isinstance(src, Tensor) else None
        tokens = torch.full((b, 1), bos_id, dtype=torch.long, device=device)
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        attention = []
        for step in range(max_len):
            logits, state, weights = model.decode_step(tokens, state, need_weights=return_attention)
            if step < min_len:
                logits[:, eos_id] = float("-inf")
            next_token = logits.argmax(dim=-1).masked_fill(finished, model.pad_id)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            if return_attention:
                attention.append(weights)
            finished |= next_token == eos_id
            if bool(finished.all()):
                break
        out = tokens[:, 1:]
        if return_attention:
            return out, torch.stack(attention, dim=1)
        return out
