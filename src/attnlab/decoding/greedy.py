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
        tokens = torch.full((b, 1), bos_id, dtype=torch.long, device=device)  # prefixes of the live rows
        rows = torch.arange(b, device=device)  # the sentence of each live row
        out = torch.full((b, max_len), model.pad_id, dtype=torch.long, device=device)
        attention: Tensor | None = None
        steps = 0
        for step in range(max_len):
            logits, state, weights = model.decode_step(tokens, state, need_weights=return_attention)
            if step < min_len:
                logits[:, eos_id] = float("-inf")
            next_token = logits.argmax(dim=-1)  # (live,)
            out[rows, step] = next_token
            if return_attention:
                if attention is None:
                    attention = weights.new_zeros(b, max_len, *weights.shape[1:])
                attention[rows, step] = weights
            steps = step + 1
            done = next_token == eos_id
            if bool(done.any()):  # finished sentences leave the batch: no more work is spent on them
                alive = (~done).nonzero(as_tuple=True)[0]
                if alive.numel() == 0:
                    break
                state.reorder(alive)
                tokens, rows, next_token = tokens.index_select(0, alive), rows[alive], next_token[alive]
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        out = out[:, :steps]
        if return_attention:
            return out, attention[:, :steps]
        return out
