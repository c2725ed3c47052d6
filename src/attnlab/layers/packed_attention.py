"""Multi-head scaled dot-product attention on packed rows (training on the CPU), in head-major buffers.

In packed training (attnlab.layers.packing) the projections run on the real tokens only: self-attention's
Q, K, V arrive as rows (N, 3 d_model), while the scores need the padded (B, H, T, S) layout. Written with
plain tensor ops, the trip there and back copies the activations several times: the scatter into
(B, T, 3 d_model), the head split's strided views made contiguous for the batched matmuls, the concat
of the heads, and in backward the gradients of Q, K and V concatenated again into (B, T, 3 d_model).

Here each real row of d_k values is scattered once, straight into head-major buffers (parts, B, H, T, d_k)
(zeros at the pads), every matmul runs on contiguous (B H, T, d_k) blocks, the output is gathered
from (B, H, T, d_k) back into packed rows, and backward writes dQ, dK, dV into one head-major buffer
from which the packed gradient (N, 3 d_model) is gathered in one pass. It computes
softmax(Q K^T / sqrt(d_k)) V with the same masks (bool, True = may attend) as
attnlab.layers.attention.scaled_dot_product_attention, without dropout on the weights, for masks
that leave every query at least one key (the caller checks).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from attnlab.layers.packing import Packing


def _to_heads(x: Tensor, rows: Tensor, parts: int, batch_heads: int, length: int, d_k: int) -> Tensor:
    """Packed rows (N, parts * H * d_k) -> head-major (parts, B H, T, d_k), zeros at the pads."""
    # zeroing the whole buffer (a memset) is faster than filling the pads' short rows by index
    buf = x.new_zeros(parts * batch_heads * length, d_k).index_copy_(0, rows, x.reshape(-1, d_k))
    return buf.view(parts, batch_heads, length, d_k)


def _to_rows(x: Tensor, rows: Tensor, n: int) -> Tensor:
    """Head-major (parts, B H, T, d_k) -> packed rows (N, parts * H * d_k): the real rows only."""
    return x.reshape(-1, x.size(-1)).index_select(0, rows).view(n, -1)


class _PackedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_q: Tensor, x_kv: Tensor | None, q_packing: Packing, kv_packing: Packing,  # type: ignore[override]
                mask: Tensor, n_heads: int) -> Tensor:
        b = q_packing.batch
        bh, t, s = b * n_heads, q_packing.length, kv_packing.length
        q_parts = 3 if x_kv is None else 1
        d_k = x_q.size(-1) // (q_parts * n_heads)
        qbuf = _to_heads(x_q, q_packing.head_rows(n_heads, q_parts), q_parts, bh, t, d_k)
        if x_kv is None:
            q, k, v, kvbuf = qbuf[0], qbuf[1], qbuf[2], None
        else:
            kvbuf = _to_heads(x_kv, kv_packing.head_rows(n_heads, 2), 2, bh, s, d_k)
            q, k, v = qbuf[0], kvbuf[0], kvbuf[1]
        scale = 1.0 / math.sqrt(q.size(-1))
        scores = torch.bmm(q, k.transpose(1, 2)).view(b, n_heads, t, s)
        scores.mul_(scale).masked_fill_(mask.logical_not(), float("-inf"))
        p = torch.softmax(scores, dim=-1).view(bh, t, s)
        out = torch.bmm(p, v)  # (B H, T, d_k)
        ctx.save_for_backward(qbuf, kvbuf, p)
        ctx.packings, ctx.n_heads, ctx.scale, ctx.self_attention = (q_packing, kv_packing), n_heads, scale, x_kv is None
        return _to_rows(out, q_packing.head_rows(n_heads, 1), x_q.size(0))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        qbuf, kvbuf, p = ctx.saved_tensors
        q_packing, kv_packing = ctx.packings
        h = ctx.n_heads
        bh, t = p.size(0), p.size(1)
        if ctx.self_attention:
            q, k, v = qbuf[0], qbuf[1], qbuf[2]
        else:
            q, k, v = qbuf[0], kvbuf[0], kvbuf[1]
        d_out = _to_heads(grad_out.contiguous(), q_packing.head_rows(h, 1), 1, bh, t, q.size(-1))[0]  # (B H, T, d_k)
        d_p = torch.bmm(d_out, v.transpose(1, 2))
        d_s = torch._softmax_backward_data(d_p, p, -1, p.dtype).mul_(ctx.scale)  # d scores, scale folded in
        n_q = grad_out.size(0)
        if ctx.self_attention:
            grads = torch.empty_like(qbuf)  # dQ, dK, dV side by side, head-major
            torch.bmm(d_s, k, out=grads[0])
            torch.bmm(d_s.transpose(1, 2), q, out=grads[1])
            torch.bmm(p.transpose(1, 2), d_out, out=grads[2])
            return _to_rows(grads, q_packing.head_rows(h, 3), n_q), None, None, None, None, None
        d_q = torch.bmm(d_s, k)
        d_kv = torch.empty_like(kvbuf)
        torch.bmm(d_s.transpose(1, 2), q, out=d_kv[0])
        torch.bmm(p.transpose(1, 2), d_out, out=d_kv[1])
        n_kv = kv_packing.n_tokens
        return (_to_rows(d_q, q_packing.head_rows(h, 1), n_q), _to_rows(d_kv, kv_packing.head_rows(h, 2), n_kv),
                None, None, None, None)


def packed_attention(x_q: Tensor, x_kv: Tensor | None, q_packing: Packing, kv_packing: Packing | None,
                     mask: Tensor, n_heads: int) -> Tensor:
    """Multi-head attention of packed rows; returns the concatenated heads, packed (N, d_model).

    - self-attention: x_q = [Q | K | V] (N, 3 d_model), x_kv None, kv_packing ignored (= q_packing);
    - encoder-decoder attention: x_q = Q (N, d_model), x_kv = [K | V] (N_s, 2 d_model) of kv_packing's rows.
    mask: bool, broadcastable to (B, 1, T, S), True = may attend; every query must keep a key.
    """
    return _PackedAttention.apply(x_q, x_kv, q_packing, q_packing if kv_packing is None else kv_packing, mask, n_heads)
