"""The Transformer's cached decoder step for CPU float32 inference, as one lean sequence of calls.

`Transformer.decode_step` goes through the named modules of Figure 1 (DecoderLayer -> AddNorm ->
MultiHeadAttention -> ...), written once for training, packing, attention pictures, autocast and every
device. At a decoding step on a CPU every operation is small (e.g. 100 rows of 256 floats), and the Python
and dispatch between them cost about as much as their arithmetic. `step` computes the same function from
the same modules' weights, for each decoder layer:

    qkv = W^{QKV} x                                   (10) masked self-attention: one prepacked matmul,
    a = attention over the cache (new k, v written)        then attnlab's kernel (decode_step.c)
    x = LayerNorm(x + W^O a)                          (11) add & norm in one pass
    a = attention of W^Q x over the memory's k, v     (12) encoder-decoder attention (k, v projected once)
    x = LayerNorm(x + W^O a)                          (13)
    x = LayerNorm(x + W_2 max(0, W_1 x + b_1) + b_2)  (14), (15) feed-forward, ReLU fused into W_1
    logits = W_out x                                  (18)

(pre-norm models: x = x + Sublayer(LayerNorm(x)), the same kernel returning both). The linear layers'
weights are prepacked once per decode (attnlab.layers.onednn.prepacked); int8 layers keep their own
kernels. Measured on a 2-core AMD EPYC, `small` model, greedy decode of 100 sentences x 32 tokens:
0.49 -> 0.41 s (`attnlab bench decode`).

It applies to CPU float32 inference without gradients, autocast or tracing, with source padding at the end
of each row, when attnlab's C kernels could be compiled (attnlab.layers.decode_kernel) and the decoder is
built from attnlab's own layers; everywhere else `Transformer.decode_step` takes the modules' path, which
tests hold it equal to (tests/models/test_transformer_step.py).

Place in the layering: models; imports only from layers and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.layers import decode_kernel
from attnlab.layers.attention import MultiHeadAttention
from attnlab.layers.dropout import cpu_fp32
from attnlab.layers.feed_forward import PositionwiseFeedForward
from attnlab.layers.onednn import fast_decoding, prepacked
from attnlab.layers.residual import AddNorm

Linear = Callable[[Tensor], Tensor]


@dataclass
class LayerPlan:
    qkv: Linear  # self-attention W^Q, W^K, W^V stacked
    self_out: Linear
    cross_q: Linear  # encoder-decoder attention W^Q (its W^K, W^V were applied once, to the memory)
    cross_out: Linear
    ffn_in: Linear  # W_1 (with the ReLU when the activation is ReLU)
    ffn_out: Linear
    activation: Callable[[Tensor], Tensor] | None  # applied between them when not fused (GELU, SiLU)


@dataclass
class StepPlan:
    epoch: int
    layers: list[LayerPlan]
    norms: list[nn.LayerNorm]  # in the order they apply: 3 per layer, then the final one of a pre-norm model
    output: Linear
    n_heads: int
    norm_first: bool
    block: Callable  # DecoderLayer.block: the sub-layers' order, written once


def applies(model: nn.Module, state, need_weights: bool) -> bool:
    """Whether `step` serves this decoder step (see the module's docstring)."""
    return (
        not need_weights
        and not model.training
        and not torch.is_grad_enabled()
        and state.caches is not None
        and state.memory_kv is not None
        and state.src_lengths is not None
        and cpu_fp32(state.memory)
        and decode_kernel.kernels() is not None
        and plan(model, state) is not None
    )


def _standard(layer: nn.Module) -> bool:
    return (
        callable(getattr(type(layer), "block", None))
        and type(layer.self_attn) is MultiHeadAttention and type(layer.cross_attn) is MultiHeadAttention
        and type(layer.ffn) is PositionwiseFeedForward
        and all(type(m) is AddNorm and type(m.norm) is nn.LayerNorm and m.norm.weight is not None
                for m in (layer.add_norm1, layer.add_norm2, layer.add_norm3))
    )


def plan(model: nn.Module, state) -> StepPlan | None:
    """The step's prepacked linear layers and norms, made once per decode and kept on the state; None
    where the decoder is not built from attnlab's own layers."""
    cached = state.step_plan
    if cached is not None and (cached is False or cached.epoch == state.fast_epoch):
        return cached or None
    layers = list(model.decoder.layers)
    final = model.decoder.final_norm
    if not all(_standard(layer) for layer in layers) or (model.cfg.norm_first and type(final) is not nn.LayerNorm):
        state.step_plan = False
        return None
    d = model.cfg.d_model
    plans, norms = [], []
    with fast_decoding(state.fast_epoch):
        for layer in layers:
            relu = layer.ffn.activation is F.relu
            plans.append(LayerPlan(
                qkv=prepacked(layer.self_attn.in_proj), self_out=prepacked(layer.self_attn.out_proj),
                cross_q=prepacked(layer.cross_attn.in_proj, rows=slice(0, d)),
                cross_out=prepacked(layer.cross_attn.out_proj),
                ffn_in=prepacked(layer.ffn.linear1, relu=relu), ffn_out=prepacked(layer.ffn.linear2),
                activation=None if relu else _in_place(layer.ffn.activation)))
            norms += [layer.add_norm1.norm, layer.add_norm2.norm, layer.add_norm3.norm]
        output = prepacked(model.output_projection)
    if model.cfg.norm_first:
        norms.append(final)
    state.step_plan = StepPlan(state.fast_epoch, plans, norms, output, model.cfg.n_heads, model.cfg.norm_first,
                               type(layers[0]).block)
    return state.step_plan


def _in_place(activation: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """SiLU (Marian's swish) overwrites W_1 x, a fresh tensor, instead of allocating another (B, d_ff)."""
    return functools.partial(F.silu, inplace=True) if activation is F.silu else activation


def _cross_attention(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor, group: int, n_heads: int) -> Tensor:
    """q (R, d_model), R = sources x group; k, v (sources, H, S, d_k) -> (R, d_model)."""
    rows, d = q.shape
    heads = q.view(rows // group, group, n_heads, d // n_heads).transpose(1, 2)  # (sources, H, group, d_k)
    return decode_kernel.decode_attention(heads, k, v, lengths).view(rows, d)


class _FusedAddNorm:
    """Add & norm as `AddNorm` is called, `add_norm(x, sublayer)`, in one kernel pass that also yields the
    next sub-layer's input `h`: post-norm x = h = LayerNorm(x + y); pre-norm x += y (in place) and
    h = the next LayerNorm(x) (the next layer's first, or the final one)."""

    def __init__(self, x: Tensor, norms: list[nn.LayerNorm], norm_first: bool):
        self.norms, self.norm_first = iter(norms), norm_first
        self.h = next(self.norms)(x) if norm_first else x  # the next sub-layer's input (B, d_model)

    def __call__(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        y = sublayer(self.h)
        if self.norm_first:
            self.h = decode_kernel.add_layer_norm(x, y, next(self.norms), keep_sum=True)
            return x
        x = self.h = decode_kernel.add_layer_norm(x, y, next(self.norms))
        return x


def step(model: nn.Module, tokens: Tensor, state) -> Tensor:
    """Next-token logits (B, V) for the prefixes `tokens` (B, t); where `applies`. Each decoder layer is
    DecoderLayer.block, the layers' one definition, run with the kernels above as its sub-layers."""
    p = plan(model, state)
    pos = tokens.size(1) - 1
    x = model.embed_tgt(tokens[:, -1:], start=pos)
    x = x.reshape(x.size(0), x.size(2))  # (B, d_model), a fresh tensor (pre-norm: updated in place)
    add_norm = _FusedAddNorm(x, p.norms, p.norm_first)
    for layer, cache, (k, v) in zip(p.layers, state.caches, state.memory_kv):
        cache.reserve(pos + 1)

        def self_attend(h: Tensor, layer: LayerPlan = layer, cache=cache) -> Tensor:
            a = decode_kernel.cache_attention(layer.qkv(h), cache.k, cache.v, pos, p.n_heads)
            cache.length = pos + 1
            return layer.self_out(a)

        def cross_attend(h: Tensor, layer: LayerPlan = layer, k: Tensor = k, v: Tensor = v) -> Tensor:
            return layer.cross_out(_cross_attention(layer.cross_q(h), k, v, state.src_lengths, state.group, p.n_heads))

        def feed_forward(h: Tensor, layer: LayerPlan = layer) -> Tensor:
            hidden = layer.ffn_in(h)
            return layer.ffn_out(hidden if layer.activation is None else layer.activation(hidden))

        x = p.block(x, self_attend, cross_attend, feed_forward, (add_norm, add_norm, add_norm))
    return p.output(add_norm.h)
