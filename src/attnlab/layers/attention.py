"""Attention (paper, section 3.2).

Scaled dot-product attention:  Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V
Multi-head attention:          MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O,
                               head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)

Masks are bool, True = may attend, broadcastable to the scores (B, n_heads, T_query, T_key).
A query whose keys are all masked gets a zero output (never NaN), forward and backward.

Place in the layering: layers; imports only from io and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.layers import decode_kernel
from attnlab.layers.dropout import cpu_fp32
from attnlab.layers.kv_cache import KVCache
from attnlab.layers.onednn import linear
from attnlab.layers.packed_attention import packed_attention
from attnlab.layers.packing import Packing


def rows_without_keys(mask: Tensor) -> Tensor | None:
    """For a bool mask (..., T, S), True = may attend: `row_ok` (..., T, 1), False where a query has no
    key at all, or None when every query has one, so the common case costs no fix-up.

    The check reduces the compact (unbroadcast) mask, e.g. (B, 1, 1, S) for padding. On the CPU the
    answer is read at once (a cheap host read); on accelerators reading it would stall the stream,
    so the fix-up is always applied there.
    """
    row_ok = mask.any(dim=-1, keepdim=True)
    if torch.compiler.is_compiling():  # torch.compile / torch.export: no data-dependent branch
        return row_ok
    if row_ok.device.type == "cpu" and bool(row_ok.all()):
        return None
    return row_ok


def _explicit_is_faster(q: Tensor, k: Tensor) -> bool:
    # Measured on CPUs (benchmarks/bench_attention.py): PyTorch's fused CPU kernel is slow to
    # differentiate in reduced precision (bf16 backward through flash attention: ~30x the explicit
    # path at T=40 and still slower at T=512), and in fp32 it loses to the explicit path on short keys
    # (forward + backward: 9.0 vs 12.4 ms at T=16, even at T=64). Without gradients, or on long keys
    # in fp32, the fused kernel wins.
    return (
        q.device.type == "cpu"
        and torch.is_grad_enabled()
        and (q.requires_grad or k.requires_grad)
        and (q.dtype in (torch.bfloat16, torch.float16) or k.size(-2) <= 48)
    )


def _packed_is_faster(x: Tensor, mask: Tensor | None) -> bool:
    # Packed rows straight into head-major buffers (attnlab.layers.packed_attention): CPU, fp32, training or
    # inference, masks that leave every query a key (an empty sentence takes the general path). It keeps the
    # whole (B, H, T, S) weights like the explicit path, so beyond 512 keys the fused kernel wins. Measured on
    # a 2-core AMD EPYC, `small` model, seconds per 2 training steps, packed vs general path: sentences of
    # 32-64 tokens 1.45 vs 1.50, 128-256 tokens 1.67 vs 2.01, 256-512 tokens 1.87 vs 2.07, 384-768: 4.77 vs 3.77;
    # the encoder of a decode (100 sentences of 1-35 tokens, no gradients): 99 -> 89 ms.
    return (
        cpu_fp32(x)
        and mask is not None
        and mask.size(-1) <= 512
        and rows_without_keys(mask) is None
    )


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """q (B, H, T, d_k), k (B, H, S, d_k), v (B, H, S, d_v) -> (B, H, T, d_v), weights (B, H, T, S) or None.

    Without `need_weights` this runs the fused kernel (F.scaled_dot_product_attention) where it is the
    faster one; with it (or when training in bf16 on a CPU), the explicit softmax(QK^T / sqrt(d_k)) V,
    which returns the weights. Both compute the same function.
    """
    row_ok = None
    if mask is not None:
        # Rows with no key to attend to: let them attend anywhere (a finite softmax, finite gradients)
        # and zero their output afterwards. Skipped when every row has a key (the usual case).
        row_ok = rows_without_keys(mask)
        if row_ok is not None:
            mask = mask | ~row_ok
    if k.dtype != q.dtype:  # e.g. keys/values cached outside autocast, queries inside it
        k, v = k.to(q.dtype), v.to(q.dtype)
    if not need_weights and not _explicit_is_faster(q, k):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        weights = None
    else:
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, S)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(dim=-1)
        if row_ok is not None:
            weights = weights * row_ok
        out = torch.matmul(F.dropout(weights, dropout_p) if dropout_p > 0 else weights, v)
        if not need_weights:
            weights = None
    if row_ok is not None:
        out = out * row_ok
    return out, weights


class MultiHeadAttention(nn.Module):
    """Multi-head attention for self-attention, masked self-attention and encoder-decoder attention.

    The projections W^Q, W^K, W^V are stored stacked in one `in_proj` (3 d_model, d_model) matrix, the
    layout of torch.nn.MultiheadAttention: self-attention projects Q, K, V with one matmul, while
    cross-attention projects Q from the decoder and K, V from the encoder memory.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        if bias:
            nn.init.zeros_(self.in_proj.bias)
            nn.init.zeros_(self.out_proj.bias)

    def _split_heads(self, x: Tensor) -> Tensor:
        # (B, T, d_model) -> (B, H, T, d_k)
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, memory: Tensor, packing: Packing | None = None) -> tuple[Tensor, Tensor]:
        """Keys and values of the encoder memory (B, S, d_model) -> 2 x (B, H, S, d_k); with `packing`,
        memory holds the real tokens only, (N, d_model), and the pads' keys/values are zeros.

        Computed once per source sentence when decoding with a cache.
        """
        kv = linear(self.in_proj, memory, rows=slice(self.d_model, 3 * self.d_model))
        k, v = (packing.unpack(kv) if packing is not None else kv).chunk(2, dim=-1)
        return self._split_heads(k), self._split_heads(v)

    def forward(
        self,
        query: Tensor,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        need_weights: bool = False,
        cache: KVCache | None = None,
        cache_pos: int = 0,
        memory_kv: tuple[Tensor, Tensor] | None = None,
        packing: Packing | None = None,
        memory_packing: Packing | None = None,
        key_lengths: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O,  head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

        Attends from `query` (B, T, d_model):
        - self-attention: `memory` None; keys/values come from `query`. With `cache`, the new keys
          and values are written at `cache_pos` and attention runs over everything cached so far.
        - encoder-decoder attention: keys/values from `memory` (B, S, d_model), or precomputed
          `memory_kv` from `project_kv`.
        - packed (training): with `packing`, `query` holds only the real tokens, (N, d_model), and so
          does the output; with `memory_packing`, `memory` is packed too, (N_s, d_model). The
          projections run on the real tokens; the scores in the padded layout.
        - decoding (with `cache` or `memory_kv`): `key_lengths` (B,), the number of real keys of each
          row, when they are a prefix (what `mask` says); the CPU decoding kernel then reads only those.
        Returns (B, T, d_model) (or (N, d_model) packed) and, if `need_weights`, the weights (B, H, T, S).
        Which kernel computes Attention is chosen by `_uses_packed_kernel` and `_uses_decode_kernel`;
        every route computes the same function.
        """
        dropout_p = self.dropout if self.training else 0.0
        if _uses_packed_kernel(query, memory, mask, need_weights, dropout_p, cache, memory_kv, packing,
                               memory_packing):
            return linear(self.out_proj, self._packed_heads(query, memory, mask, packing, memory_packing)), None
        q, k, v = self._project(query, memory, cache, cache_pos, memory_kv, packing, memory_packing)  # (B, H, ., d_k)
        if _uses_decode_kernel(q, k, v, mask, need_weights, dropout_p, cache, memory_kv, packing, key_lengths):
            concat, weights = decode_kernel.decode_attention(q, k, v, key_lengths), None  # (B, T, d_model)
        else:
            heads, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p, need_weights)  # (B, H, T, d_v)
            concat = self._concat_heads(heads, packing)
        return linear(self.out_proj, concat), weights

    def _project(self, query: Tensor, memory: Tensor | None, cache: KVCache | None, cache_pos: int,
                 memory_kv: tuple[Tensor, Tensor] | None, packing: Packing | None,
                 memory_packing: Packing | None) -> tuple[Tensor, Tensor, Tensor]:
        """Q W^Q, K W^K, V W^V split into heads, (B, H, T, d_k) and (B, H, S, d_k) x 2; the keys and
        values from the query (self-attention, through the cache when given) or from the memory."""
        d = self.d_model
        if memory is None and memory_kv is None:
            qkv = linear(self.in_proj, query)
            if packing is not None:
                qkv = packing.unpack(qkv)  # (N, 3d) -> (B, T, 3d)
            q, k, v = (self._split_heads(x) for x in qkv.chunk(3, dim=-1))
            if cache is not None:
                k, v = cache.update(cache_pos, k, v)
            return q, k, v
        q = linear(self.in_proj, query, rows=slice(0, d))
        q = self._split_heads(packing.unpack(q) if packing is not None else q)
        k, v = memory_kv if memory_kv is not None else self.project_kv(memory, memory_packing)
        return q, k, v

    def _concat_heads(self, heads: Tensor, packing: Packing | None) -> Tensor:
        # (B, H, T, d_k) -> (B, T, d_model), or the real tokens only (N, d_model) when packed
        b, h, t, dk = heads.shape
        out = heads.transpose(1, 2).reshape(b, t, h * dk)
        return packing.pack(out) if packing is not None else out

    def _packed_heads(self, query: Tensor, memory: Tensor | None, mask: Tensor | None, packing: Packing,
                      memory_packing: Packing | None) -> Tensor:
        """Concat(head_1..head_h) (N, d_model) straight from and into the packed rows (C kernel)."""
        d = self.d_model
        if memory is None:
            return packed_attention(linear(self.in_proj, query), None, packing, None, mask, self.n_heads)
        return packed_attention(linear(self.in_proj, query, rows=slice(0, d)),
                                linear(self.in_proj, memory, rows=slice(d, 3 * d)),
                                packing, memory_packing, mask, self.n_heads)


def _uses_packed_kernel(query: Tensor, memory: Tensor | None, mask: Tensor | None, need_weights: bool,
                        dropout_p: float, cache: KVCache | None, memory_kv: tuple[Tensor, Tensor] | None,
                        packing: Packing | None, memory_packing: Packing | None) -> bool:
    """Attention on packed rows (attnlab.layers.packed_attention): packed queries (and a packed memory, for
    encoder-decoder attention), no cache, no weights wanted, no attention dropout, and `_packed_is_faster`."""
    return (packing is not None and cache is None and memory_kv is None and not need_weights and dropout_p == 0.0
            and (memory is None or memory_packing is not None) and _packed_is_faster(query, mask))


def _uses_decode_kernel(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, need_weights: bool, dropout_p: float,
                        cache: KVCache | None, memory_kv: tuple[Tensor, Tensor] | None, packing: Packing | None,
                        key_lengths: Tensor | None) -> bool:
    """The decoding kernel (attnlab.layers.decode_kernel): a decoder step (a cache or precomputed memory keys),
    not packed, no weights wanted, no dropout, keys a prefix of each row (`key_lengths`) or all real, and
    CPU float32 inference where the kernel can be had. Otherwise a mask sends the step to PyTorch's kernels."""
    return ((cache is not None or memory_kv is not None) and packing is None and not need_weights
            and dropout_p == 0.0 and (mask is None or key_lengths is not None) and decode_kernel.applies(q, k, v))


# ---- attention of the RNN encoder-decoders ------------------------------------------------------
# One decoder query s (B, d_q) against the encoder states h_1..h_S (B, S, d_m):
#     a_j = softmax_j(score(s, h_j)) over the real source positions,   context = sum_j a_j h_j.
# `precompute(memory)` holds everything about the memory that does not change across decoder steps;
# pass its result as `precomputed=` at every step. Masks: (B, S) bool, True = may attend.


def masked_attention(scores: Tensor, memory: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """scores (B, S), memory (B, S, d_m), mask (B, S) -> context (B, d_m), weights (B, S).

    Weights are exactly 0 on masked positions; a row with no position to attend to gets zero
    weights and a zero context (never NaN, forward or backward).
    """
    row_ok = None
    if mask is not None:
        if mask.shape != scores.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool of shape {tuple(scores.shape)} (True = may attend), "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        row_ok = mask.any(dim=-1, keepdim=True)  # (B, 1)
        # a fully masked row attends anywhere (finite softmax) and is zeroed below
        scores = scores.masked_fill(~(mask | ~row_ok), float("-inf"))
    weights = scores.softmax(dim=-1)  # (B, S)
    if row_ok is not None:
        weights = weights * row_ok
    context = torch.bmm(weights.unsqueeze(1).to(memory.dtype), memory).squeeze(1)  # (B, d_m)
    return context, weights


class _RNNAttention(nn.Module):
    """Shared interface: forward(query (B, d_q), memory (B, S, d_m), mask (B, S), precomputed)."""

    d_query: int
    d_memory: int

    def precompute(self, memory: Tensor) -> Tensor:
        """The per-source part of the score; computed once, reused at every decoder step."""
        return memory

    def score(self, query: Tensor, memory: Tensor, precomputed: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(
        self, query: Tensor, memory: Tensor, mask: Tensor | None = None, precomputed: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """query (B, d_q), memory (B, S, d_m), mask (B, S) bool -> context (B, d_m), weights (B, S)."""
        if query.dim() != 2 or memory.dim() != 3 or query.size(0) != memory.size(0):
            raise ValueError(
                f"{type(self).__name__} expects query (B, d_q) and memory (B, S, d_m), "
                f"got {tuple(query.shape)} and {tuple(memory.shape)}"
            )
        if query.size(-1) != self.d_query or memory.size(-1) != self.d_memory:
            raise ValueError(
                f"{type(self).__name__} was built for d_query={self.d_query}, d_memory={self.d_memory}; "
                f"got query (..., {query.size(-1)}) and memory (..., {memory.size(-1)})"
            )
        if precomputed is None:
            precomputed = self.precompute(memory)
        return masked_attention(self.score(query, memory, precomputed), memory, mask)


class AdditiveAttention(_RNNAttention):
    """Bahdanau et al. 2014 ("concat" in Luong et al. 2015):

        score(s, h) = v^T tanh(W_s s + W_h h + b)

    W_h h + b does not depend on the decoder step: `precompute(memory)` returns it, (B, S, d_attn).
    """

    def __init__(self, d_query: int, d_memory: int, d_attn: int | None = None):
        super().__init__()
        self.d_query, self.d_memory = d_query, d_memory
        d_attn = d_attn or d_query
        self.query_proj = nn.Linear(d_query, d_attn, bias=False)  # W_s
        self.memory_proj = nn.Linear(d_memory, d_attn)  # W_h, b
        self.v = nn.Linear(d_attn, 1, bias=False)

    def precompute(self, memory: Tensor) -> Tensor:
        return self.memory_proj(memory)  # (B, S, d_attn)

    def score(self, query: Tensor, memory: Tensor, precomputed: Tensor) -> Tensor:
        return self.v(torch.tanh(precomputed + self.query_proj(query).unsqueeze(1))).squeeze(-1)  # (B, S)


class DotAttention(_RNNAttention):
    """Luong et al. 2015, "dot":  score(s, h) = s^T h  (needs d_query == d_memory; no parameters)."""

    def __init__(self, d_query: int, d_memory: int | None = None):
        super().__init__()
        d_memory = d_query if d_memory is None else d_memory
        if d_memory != d_query:
            raise ValueError(f"dot attention needs d_query == d_memory, got {d_query} and {d_memory}")
        self.d_query = self.d_memory = d_query

    def score(self, query: Tensor, memory: Tensor, precomputed: Tensor) -> Tensor:
        return torch.bmm(precomputed, query.unsqueeze(-1)).squeeze(-1)  # (B, S)


class GeneralAttention(_RNNAttention):
    """Luong et al. 2015, "general":  score(s, h) = s^T W h.

    W h does not depend on the decoder step: `precompute(memory)` returns it, (B, S, d_query).
    """

    def __init__(self, d_query: int, d_memory: int):
        super().__init__()
        self.d_query, self.d_memory = d_query, d_memory
        self.W = nn.Linear(d_memory, d_query, bias=False)

    def precompute(self, memory: Tensor) -> Tensor:
        return self.W(memory)  # (B, S, d_query)

    def score(self, query: Tensor, memory: Tensor, precomputed: Tensor) -> Tensor:
        return torch.bmm(precomputed, query.unsqueeze(-1)).squeeze(-1)  # (B, S)
