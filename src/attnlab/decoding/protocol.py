"""The one decoding protocol every model family in attnlab speaks (Transformer, RNNs, captioners).

    state = model.init_decode(src, max_len=..., use_cache=True)     # encode once
    logits, state, weights = model.decode_step(prefix, state, need_weights=False)
        # prefix (B, t) int64: every token so far, BOS first; logits (B, V) for token t+1;
        # weights: attention of the new token over the source, (B, L, H, S), or None
    state.reorder(index)                                             # keep/duplicate batch rows

`model.pad_id` is the padding id. Greedy, beam search, BLEU and attention pictures are written
once against this protocol.

Place in the layering: decoding; imports only from models and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Protocol

from torch import Tensor, nn


class DecoderState(Protocol):
    def reorder(self, index: Tensor) -> Any: ...


class Decodable(Protocol):
    pad_id: int

    def init_decode(self, src: Any, max_len: int = ..., use_cache: bool = ...) -> DecoderState: ...

    def decode_step(
        self, tokens: Tensor, state: DecoderState, need_weights: bool = ...
    ) -> tuple[Tensor, DecoderState, Tensor | None]: ...


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Decode without dropout, then give the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def batch_size_of(src: Any) -> int:
    if isinstance(src, Tensor):
        return src.size(0)
    raise ValueError(f"cannot find the batch size of a source of type {type(src).__name__}")
