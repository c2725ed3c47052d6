"""Multi-head scaled dot-product attention on packed rows (training on the CPU), in head-major buffers.

In packed training (attnlab.layers.packing) the projections run on the real tokens only: self-attention's
Q, K, V arrive as rows (N, 3 d_model), while the scores need a padded (B, H, T, S) layout. Written with
plain tensor ops, the trip there and back copies the activations several times: the scatter into
(B, T, 3 d_model), the head split's strided views made contiguous for the batched matmuls, the concat
of the heads, and in backward the gradients of Q, K and V concatenated again into (B, T, 3 d_model).

Here each real row of d_k values is scattered once, straight into head-major buffers (zeros at the
pads), every matmul runs on contiguous (B H, T, d_k) blocks, the output is gathered back into packed
rows, and backward writes dQ, dK, dV into one head-major buffer from which the packed gradient
(N, 3 d_model) is gathered in one pass. The sentences are also grouped by length (`attention_groups`):
each group is padded to its own longest sentence, not the batch's, which cuts the attention's padded
work: forward + backward of one `base` self-attention (64 sentences of 8-30 tokens, 8 heads) took 19.4 ms
in one group, 15.7 ms in two and 13.9 ms in four (2-core AMD EPYC).

Where attnlab's C kernels can be had (attnlab.layers.cpu_kernels) and the mask is the packing's own
(padding, or padding and causal), `packed_attention.c` does all of it on the packed rows themselves:
for each (sentence, head) the scores, softmax and weighted sum forward, and the four gradient products
backward, written straight into the rows of the gradient; no padding, no head-major copies. Measured
on a 2-core AMD EPYC, `base` training (64 sentences, 8 heads, 18 attention layers a step), attention
forward + backward over 4 steps (profiler): 0.64 s with the batched matmuls -> 0.32 s; one self-attention
~4.5 ms forward + backward.

It computes softmax(Q K^T / sqrt(d_k)) V with the same masks (bool, True = may attend) as
attnlab.layers.attention.scaled_dot_product_attention, without dropout on the weights, for masks that
leave every query at least one key (the caller checks).

Place in the layering: layers; imports only from io and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from attnlab.layers.cpu_kernels import Kernels
from attnlab.layers.masks import causal_mask
from attnlab.layers.packing import Packing

KERNELS = Kernels("packed_attention.c", "packed attention kernel")  # argument types read from the C source


def attention_groups(packing: Packing, max_groups: int = 4, min_sentences: int = 16) -> list[Tensor]:
    """The sentences of a batch in up to `max_groups` groups of similar length (longest first), with at
    least `min_sentences` each (fewer groups, fewer but larger matmuls)."""
    n_groups = max(1, min(max_groups, packing.batch // min_sentences))
    return list(torch.argsort(packing.keep.sum(1), descending=True, stable=True).tensor_split(n_groups))


class _Layout:
    """Where the packed rows (N, parts * H * d_k) of one side go: for each group of sentences a head-major
    block (parts, B_g H, L_g, d_k), L_g the group's longest sentence on this side, the blocks one after
    another in a buffer of rows of d_k. `rows` (N * parts * H,): the buffer row of each packed value."""

    def __init__(self, packing: Packing, groups: list[Tensor], n_heads: int, parts: int):
        lengths = packing.keep.sum(1)
        device = lengths.device
        start = torch.empty(packing.batch, dtype=torch.long, device=device)  # row of (part 0, head 0, t 0)
        part_stride, head_stride = torch.empty_like(start), torch.empty_like(start)
        self.groups, self.parts, self.n_heads = groups, parts, n_heads
        self.blocks: list[tuple[int, int, int]] = []  # (first row, B_g, L_g)
        offset = 0
        for sentences in groups:
            b_g, l_g = sentences.numel(), max(1, int(lengths[sentences].max()))
            self.blocks.append((offset, b_g, l_g))
            start[sentences] = offset + torch.arange(b_g, device=device) * (n_heads * l_g)
            part_stride[sentences], head_stride[sentences] = b_g * n_heads * l_g, l_g
            offset += parts * b_g * n_heads * l_g
        self.size = offset
        b = packing.index.div(packing.length, rounding_mode="floor")
        t = packing.index.remainder(packing.length)
        p = torch.arange(parts, device=device)[None, :, None] * part_stride[b][:, None, None]
        h = torch.arange(n_heads, device=device)[None, None, :] * head_stride[b][:, None, None]
        self.rows = ((start[b] + t)[:, None, None] + p + h).reshape(-1)

    def scatter(self, x: Tensor, d_k: int) -> Tensor:
        """Packed rows -> the buffer (size, d_k), zeros at the pads (zeroing the whole buffer, a memset,
        is faster than filling the pads' short rows by index)."""
        return x.new_zeros(self.size, d_k).index_copy_(0, self.rows, x.reshape(-1, d_k))

    def gather(self, buf: Tensor, n: int) -> Tensor:
        """The buffer -> packed rows (N, parts * H * d_k): the real rows only."""
        return buf.index_select(0, self.rows).view(n, -1)

    def blocks_of(self, buf: Tensor) -> list[Tensor]:
        """The buffer (size, d_k) as one (parts, B_g H, L_g, d_k) view per group."""
        d_k, h = buf.size(-1), self.n_heads
        return [buf[o:o + self.parts * b * h * l].view(self.parts, b * h, l, d_k) for o, b, l in self.blocks]


def _layouts(q_packing: Packing, kv_packing: Packing, n_heads: int, self_attention: bool):
    """(queries' layout, output's layout, keys/values' layout or None), built once per batch (the layers
    of a stack share them) and kept on the queries' packing."""
    key = (n_heads, self_attention, id(kv_packing))
    cache = q_packing.layouts
    if key not in cache:
        groups = attention_groups(q_packing)
        out = _Layout(q_packing, groups, n_heads, 1)
        cache[key] = ((_Layout(q_packing, groups, n_heads, 3), out, None) if self_attention
                      else (out, out, _Layout(kv_packing, groups, n_heads, 2)))
    return cache[key]


def _qkv(qb: Tensor, kvb: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    return (qb[0], qb[1], qb[2]) if kvb is None else (qb[0], kvb[0], kvb[1])


class _PackedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_q: Tensor, x_kv: Tensor | None, q_packing: Packing, kv_packing: Packing,  # type: ignore[override]
                mask: Tensor, n_heads: int) -> Tensor:
        q_layout, out_layout, kv_layout = _layouts(q_packing, kv_packing, n_heads, x_kv is None)
        d_k = x_q.size(-1) // (q_layout.parts * n_heads)
        scale = 1.0 / math.sqrt(d_k)
        qbuf = q_layout.scatter(x_q, d_k)
        kvbuf = None if kv_layout is None else kv_layout.scatter(x_kv, d_k)
        out = x_q.new_empty(out_layout.size, d_k)
        blocked = mask.logical_not()
        kv_blocks = kv_layout.blocks_of(kvbuf) if kv_layout is not None else [None] * len(q_layout.blocks)
        probs = []
        for qb, kvb, ob, sentences in zip(q_layout.blocks_of(qbuf), kv_blocks, out_layout.blocks_of(out),
                                          q_layout.groups):
            q, k, v = _qkv(qb, kvb)
            t, s = q.size(1), k.size(1)
            scores = torch.bmm(q, k.transpose(1, 2)).view(-1, n_heads, t, s)
            # the group's rows of the (B, 1, T or 1, S) mask, cut to its lengths
            scores.mul_(scale).masked_fill_(blocked.index_select(0, sentences)[:, :, :t, :s], float("-inf"))
            p = torch.softmax(scores, dim=-1).view(-1, t, s)
            torch.bmm(p, v, out=ob[0])
            probs.append(p)
        ctx.save_for_backward(qbuf, kvbuf, *probs)
        ctx.layouts, ctx.scale = (q_layout, out_layout, kv_layout), scale
        ctx.n_kv = 0 if x_kv is None else x_kv.size(0)
        return out_layout.gather(out, x_q.size(0))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        qbuf, kvbuf, *probs = ctx.saved_tensors
        q_layout, out_layout, kv_layout = ctx.layouts
        d_out = out_layout.scatter(grad_out.contiguous(), qbuf.size(-1))
        d_qbuf = torch.empty_like(qbuf)  # self-attention: dQ, dK, dV side by side, head-major
        d_kvbuf = None if kvbuf is None else torch.empty_like(kvbuf)
        n = len(probs)
        kv_blocks = kv_layout.blocks_of(kvbuf) if kvbuf is not None else [None] * n
        d_kv_blocks = kv_layout.blocks_of(d_kvbuf) if kvbuf is not None else [None] * n
        for qb, kvb, dqb, dkvb, dob, p in zip(q_layout.blocks_of(qbuf), kv_blocks, q_layout.blocks_of(d_qbuf),
                                              d_kv_blocks, out_layout.blocks_of(d_out), probs):
            q, k, v = _qkv(qb, kvb)
            dq, dk, dv = _qkv(dqb, dkvb)
            d_p = torch.bmm(dob[0], v.transpose(1, 2))
            d_s = torch._softmax_backward_data(d_p, p, -1, p.dtype).mul_(ctx.scale)  # d scores, scale folded in
            torch.bmm(d_s, k, out=dq)
            torch.bmm(d_s.transpose(1, 2), q, out=dk)
            torch.bmm(p.transpose(1, 2), dob[0], out=dv)
        d_q = q_layout.gather(d_qbuf, grad_out.size(0))
        d_kv = None if kvbuf is None else kv_layout.gather(d_kvbuf, ctx.n_kv)
        return d_q, d_kv, None, None, None, None


@dataclass
class _Plan:
    """Where each sentence's rows are, for the kernel: starts and lengths (B,) of the queries' and the
    keys' rows, each (sentence, head)'s offset into the saved weights, and whether attention is causal."""
    mask: Tensor  # the mask this plan was checked against (kept: the cache is keyed on it)
    q_start: Tensor
    q_len: Tensor
    k_start: Tensor
    k_len: Tensor
    p_offset: Tensor
    p_total: int
    causal: bool


def _starts(lengths: Tensor) -> Tensor:
    return (torch.cumsum(lengths, 0) - lengths).contiguous()


def _kernel_plan(q_packing: Packing, kv_packing: Packing, mask: Tensor, n_heads: int, self_attention: bool) -> _Plan | None:
    """The kernel's plan when it can take this attention (the mask is the packings' own: padding of the
    keys, and causal for self-attention of as many queries as keys), else None; checked once per mask and
    batch, kept on the queries' packing."""
    key = ("kernel", id(mask), id(kv_packing), n_heads, self_attention)
    cache = q_packing.layouts
    hit = cache.get(key)
    if hit is not None and (hit is False or hit.mask is mask):
        return hit or None
    plan: _Plan | bool = False
    if KERNELS.get() is not None and mask.dtype == torch.bool and mask.dim() == 4 and mask.size(1) == 1:
        keys = kv_packing.keep[:, None, None, :]  # (B, 1, 1, S)
        causal = None
        if mask.shape == keys.shape and torch.equal(mask, keys):
            causal = False
        elif (self_attention and mask.shape == (q_packing.batch, 1, q_packing.length, q_packing.length)
              and torch.equal(mask, keys & causal_mask(q_packing.length, mask.device))):
            causal = True
        if causal is not None:
            q_len = q_packing.keep.sum(1).to(torch.int64)
            k_len = kv_packing.keep.sum(1).to(torch.int64)
            sizes = q_len * k_len * n_heads
            plan = _Plan(mask, _starts(q_len), q_len.contiguous(), _starts(k_len), k_len.contiguous(), _starts(sizes),
                         int(sizes.sum()), causal)
    cache[key] = plan
    return plan or None


def _addr(t: Tensor, columns: int = 0) -> int:
    return t.data_ptr() + columns * t.element_size()


def _common_args(x_q: Tensor, x_kv: Tensor | None, d: int, plan: _Plan, n_heads: int, scale: float) -> tuple:
    """The arguments forward and backward of the kernel share: where Q, K and V lie (self-attention:
    [Q | K | V] rows of x_q; encoder-decoder: Q = x_q, [K | V] rows of x_kv), the plan, the heads."""
    kv, kv_off = (x_q, d) if x_kv is None else (x_kv, 0)
    return (x_q.data_ptr(), x_q.size(1), _addr(kv, kv_off), _addr(kv, kv_off + d), kv.size(1),
            plan.q_start.data_ptr(), plan.q_len.data_ptr(), plan.k_start.data_ptr(), plan.k_len.data_ptr(),
            plan.p_offset.data_ptr(), plan.q_len.numel(), n_heads, d // n_heads, int(plan.causal), scale)


class _KernelPackedAttention(torch.autograd.Function):
    """packed_attention through packed_attention.c (float32 on the CPU); saves the inputs and the
    weights P for backward."""

    @staticmethod
    def forward(ctx, x_q: Tensor, x_kv: Tensor | None, plan: _Plan, n_heads: int) -> Tensor:  # type: ignore[override]
        x_q = x_q.contiguous()
        x_kv = None if x_kv is None else x_kv.contiguous()
        d = x_q.size(1) // 3 if x_kv is None else x_q.size(1)
        d_k = d // n_heads
        scale = 1.0 / math.sqrt(d_k)
        out = x_q.new_empty(x_q.size(0), d)
        probs = x_q.new_empty(max(1, plan.p_total))
        KERNELS.get().attnlab_packed_attention_forward(*_common_args(x_q, x_kv, d, plan, n_heads, scale),
                                                       out.data_ptr(), d, probs.data_ptr())
        ctx.save_for_backward(x_q, x_kv, probs)
        ctx.plan, ctx.n_heads, ctx.scale = plan, n_heads, scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x_q, x_kv, probs = ctx.saved_tensors
        plan, n_heads = ctx.plan, ctx.n_heads
        grad_out = grad_out.contiguous()
        d = grad_out.size(1)
        d_q = torch.empty_like(x_q)  # self-attention: [dQ | dK | dV], as the fused projection's output
        d_kv, d_kv_off = (d_q, d) if x_kv is None else (torch.empty_like(x_kv), 0)
        KERNELS.get().attnlab_packed_attention_backward(
            *_common_args(x_q, x_kv, d, plan, n_heads, ctx.scale), probs.data_ptr(), grad_out.data_ptr(), d,
            d_q.data_ptr(), x_q.size(1), _addr(d_kv, d_kv_off), _addr(d_kv, d_kv_off + d), d_kv.size(1))
        return d_q, (None if x_kv is None else d_kv), None, None


def packed_attention(x_q: Tensor, x_kv: Tensor | None, q_packing: Packing, kv_packing: Packing | None,
                     mask: Tensor, n_heads: int) -> Tensor:
    """Multi-head attention of packed rows; returns the concatenated heads, packed (N, d_model).

    - self-attention: x_q = [Q | K | V] (N, 3 d_model), x_kv None, kv_packing ignored (= q_packing);
    - encoder-decoder attention: x_q = Q (N, d_model), x_kv = [K | V] (N_s, 2 d_model) of kv_packing's rows.
    mask: bool, broadcastable to (B, 1, T, S), True = may attend; every query must keep a key.
    """
    kv_packing = q_packing if kv_packing is None else kv_packing
    if x_q.dtype == torch.float32 and x_q.device.type == "cpu":
        plan = _kernel_plan(q_packing, kv_packing, mask, n_heads, x_kv is None)
        if plan is not None:
            return _KernelPackedAttention.apply(x_q, x_kv, plan, n_heads)
    return _PackedAttention.apply(x_q, x_kv, q_packing, kv_packing, mask, n_heads)
