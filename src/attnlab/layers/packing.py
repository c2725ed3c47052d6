"""Packed (unpadded) token layout for training: position-wise layers see only the real tokens.

A padded batch (B, T) of sentences of different lengths holds many pad positions; every linear layer,
feed-forward network, layer norm, dropout and the output projection would spend work on them and
throw it away. Everything in a Transformer layer except the attention scores is position-wise, so
those layers can run on the real tokens alone, stored as rows (N, d_model), N = number of real tokens.
Attention alone needs the (B, T) layout: `unpack` scatters projected queries/keys/values into it (zeros
at the pads, which the masks hide) and `pack` gathers the attention output back.

The result for every real token equals the padded computation's (it is the same function of the
same inputs); the saving is the padded fraction of the work. Used by `Transformer.forward(...,
positions=...)`, which the trainer calls with the target positions that carry a loss.

Place in the layering: layers; imports only from io and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import torch
from torch import Tensor


class Packing:
    """The real positions of a (B, T) batch: `keep` (B, T) bool, True = a real token.

    Each row's real tokens must be a prefix (right padding), so that attention masks built from
    `keep` are the padding masks of the padded layout.
    """

    def __init__(self, keep: Tensor):
        if keep.dim() != 2 or keep.dtype != torch.bool:
            raise ValueError(f"keep must be a (B, T) bool tensor, got {keep.dtype} {tuple(keep.shape)}")
        self.batch, self.length = keep.shape
        self.keep = keep
        self.index = keep.reshape(-1).nonzero().squeeze(1)  # (N,) flat positions of the real tokens
        self._pad_index: Tensor | None = None
        self.layouts: dict = {}  # attnlab.layers.packed_attention's head-major layouts of this batch

    @property
    def n_tokens(self) -> int:
        return self.index.numel()

    @property
    def key_mask(self) -> Tensor:
        """(B, 1, 1, T) bool, True = a real key (the padding mask of this layout)."""
        return self.keep[:, None, None, :]

    def pack(self, x: Tensor) -> Tensor:
        """(B, T, ...) -> (N, ...): the real positions only."""
        flat = x.reshape(self.batch * self.length, *x.shape[2:])
        return _Gather.apply(flat, self.index)

    @property
    def pad_index(self) -> Tensor:
        """(B * T - N,) flat positions of the pads."""
        if self._pad_index is None:
            self._pad_index = (~self.keep).reshape(-1).nonzero().squeeze(1)
        return self._pad_index

    def unpack(self, x: Tensor) -> Tensor:
        """(N, ...) -> (B, T, ...), zeros at the padded positions."""
        rows = self.batch * self.length
        return _Scatter.apply(x, self.index, rows, self.pad_index).view(self.batch, self.length, *x.shape[1:])


# Gather and scatter over unique indices are each other's gradient. Written out because autograd's
# gradient of index_select is an index_add (a serial scatter-add on the CPU, several times slower).
def _scatter(x: Tensor, index: Tensor, rows: int, pad_index: Tensor | None = None) -> Tensor:
    if pad_index is None:
        return x.new_zeros(rows, *x.shape[1:]).index_copy_(0, index, x)
    # every row written once: the real ones copied, the pads zeroed (not the whole tensor zeroed first)
    return x.new_empty(rows, *x.shape[1:]).index_fill_(0, pad_index, 0).index_copy_(0, index, x)


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.rows = x.size(0)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (index,) = ctx.saved_tensors
        return _Scatter.apply(grad, index, ctx.rows), None


class _Scatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, rows: int, pad_index: Tensor | None = None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        return _scatter(x, index, rows, pad_index)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (index,) = ctx.saved_tensors
        return _Gather.apply(grad.contiguous(), index), None, None, None
