"""Greedy decoding: at every step take the most probable next token.

Place in the layering: decoding; imports only from models and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from attnlab.decoding.protocol import Decodable, batch_size_of, eval_mode


COMPACT_DENOMINATOR = 4  # compact the batch once a quarter of its rows have ended


def fast_argmax(logits: Tensor, block: int = 64) -> Tensor:
    """logits.argmax(dim=-1) for (B, V): the same indices (the first maximum of each row), found in two
    passes: the maximum of every block of 64 (a vectorised reduction), then the first position of the
    maximum within the first block that holds it. On a CPU, ~4x faster than argmax over V = 8000."""
    b, v = logits.shape
    main = v - v % block
    if main == 0 or logits.device.type != "cpu":
        return logits.argmax(dim=-1)
    blocks = logits[:, :main].view(b, main // block, block)
    best_block = blocks.amax(dim=-1).argmax(dim=-1)  # (B,)
    rows = torch.arange(b, device=logits.device)
    index = best_block * block + blocks[rows, best_block].argmax(dim=-1)
    if main < v:  # the last, partial block: only an index strictly larger if its maximum is greater
        tail = logits[:, main:]
        tail_best = tail.argmax(dim=-1)
        best, found = tail[rows, tail_best], logits[rows, index]
        later = (best > found) | (best.isnan() & ~found.isnan())  # a NaN is the maximum, as for torch.argmax
        index = torch.where(later, main + tail_best, index)
    return index


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
    banned: Sequence[int] = (),
    force_eos: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Decode src (B, S) -> generated tokens (B, T<=max_len), without BOS; each row ends at its EOS
    (included) and is padded with model.pad_id after it.

    With `return_attention`, also returns the attention of every generated token over the
    source, (B, T, L, H, S). EOS is not chosen before `min_len` tokens (as in beam_search); the `banned`
    ids never are (Marian's bad_words_ids: its pad, which is also its decoder start); with `force_eos`
    the last step (max_len) is EOS, as transformers' forced_eos_token_id makes it.
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
        finished = torch.zeros(b, dtype=torch.bool, device=device)  # live rows that already ended
        n_finished = 0
        steps = 0
        for step in range(max_len):
            logits, state, weights = model.decode_step(tokens, state, need_weights=return_attention)
            if step < min_len:
                logits[:, eos_id] = float("-inf")
            if banned:
                logits[:, list(banned)] = float("-inf")
            next_token = fast_argmax(logits)  # (live,)
            if force_eos and step == max_len - 1:
                next_token = torch.full_like(next_token, eos_id)
            if n_finished:  # rows that ended earlier keep padding: out and attention stay as they are
                next_token = next_token.masked_fill(finished, model.pad_id)
            out[rows, step] = next_token
            if return_attention:
                if attention is None:
                    attention = weights.new_zeros(b, max_len, *weights.shape[1:])
                attention[rows, step] = weights * (~finished).view(-1, *[1] * (weights.dim() - 1)) if n_finished \
                    else weights
            steps = step + 1
            finished |= next_token == eos_id
            n_finished = int(finished.sum())
            if n_finished == finished.numel():
                break
            # finished sentences leave the batch, so no more work is spent on them; the rows are compacted
            # once a quarter of them has ended (each compaction copies every cache, about the cost of
            # carrying a few finished rows for a few steps)
            if n_finished * COMPACT_DENOMINATOR >= finished.numel():
                alive = (~finished).nonzero(as_tuple=True)[0]
                state.reorder(alive)
                tokens, rows, next_token = tokens.index_select(0, alive), rows[alive], next_token[alive]
                finished, n_finished = finished[alive], 0
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        out = out[:, :steps]
        if return_attention:
            return out, attention[:, :steps]
        return out
