"""The Transformer of Vaswani et al. 2017, "Attention Is All You Need", every step a named module.

Encoder (Figure 1, left)                         Decoder (Figure 1, right)
 (1) input_embedding  x sqrt(d_model)             (8)  output_embedding x sqrt(d_model)
 (2) src_positions (sinusoidal)                   (9)  tgt_positions
 (3) EncoderLayer.self_attn                       (10) DecoderLayer.self_attn (masked)
 (4) EncoderLayer.add_norm1                       (11) DecoderLayer.add_norm1
 (5) EncoderLayer.ffn                             (12) DecoderLayer.cross_attn (encoder-decoder)
 (6) EncoderLayer.add_norm2                       (13) DecoderLayer.add_norm2
 (7) Encoder.layers (N of them)                   (14) DecoderLayer.ffn, (15) add_norm3
                                                  (16) Decoder.layers (N of them)
Output: (17) decoder states -> (18) output_projection -> (19) softmax -> (20) output probabilities.

Decoding protocol (shared by every model family in attnlab, see attnlab.decoding):
    state = model.init_decode(src, max_len, use_cache)
    logits, state, weights = model.decode_step(prefix, state, need_weights)
    state.reorder(index)   # beam search

Place in the layering: models; imports only from layers and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from attnlab.config import TransformerConfig
from attnlab.layers.attention import MultiHeadAttention
from attnlab.layers.dropout import Dropout
from attnlab.layers.embedding import TokenEmbedding, hold_row_at_zero, positional_encoding
from attnlab.layers.feed_forward import PositionwiseFeedForward
from attnlab.layers.kv_cache import KVCache
from attnlab.layers.onednn import fast_decoding, linear, new_epoch
from attnlab.layers.masks import causal_mask, decoder_self_mask, padding_mask
from attnlab.layers.packing import Packing
from attnlab.layers.residual import AddNorm
from attnlab.models import transformer_step
from attnlab.models.transformer_state import TransformerState, check_tokens, prefix_lengths  # noqa: F401

Sublayer = Callable[[Tensor], Tensor]  # (B, T, d_model) -> (B, T, d_model)
AddNormFn = Callable[[Tensor, Sublayer], Tensor]  # add_norm(x, sublayer), as AddNorm.forward


class EncoderLayer(nn.Module):
    """Self-attention -> add & norm -> feed-forward -> add & norm."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        ffn_dropout = cfg.dropout if cfg.ffn_dropout is None else cfg.ffn_dropout
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout, cfg.bias)
        self.add_norm1 = AddNorm(cfg.d_model, cfg.dropout, cfg.norm_first, cfg.layer_norm_eps)
        self.ffn = PositionwiseFeedForward(cfg.d_model, cfg.d_ff, ffn_dropout, cfg.activation, cfg.bias)
        self.add_norm2 = AddNorm(cfg.d_model, cfg.dropout, cfg.norm_first, cfg.layer_norm_eps)

    def forward(self, x: Tensor, src_mask: Tensor | None, need_weights: bool = False,
                packing: Packing | None = None) -> tuple[Tensor, Tensor | None]:
        # x: (B, S, d_model), or (N, d_model) real tokens with `packing`; src_mask: (B, 1, 1, S)
        weights = None

        def attend(h: Tensor) -> Tensor:
            nonlocal weights
            h, weights = self.self_attn(h, mask=src_mask, need_weights=need_weights, packing=packing)
            return h

        x = self.add_norm1(x, attend)
        x = self.add_norm2(x, self.ffn)
        return x, weights


class DecoderLayer(nn.Module):
    """Masked self-attention -> add & norm -> encoder-decoder attention -> add & norm -> FFN -> add & norm."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        ffn_dropout = cfg.dropout if cfg.ffn_dropout is None else cfg.ffn_dropout
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout, cfg.bias)
        self.add_norm1 = AddNorm(cfg.d_model, cfg.dropout, cfg.norm_first, cfg.layer_norm_eps)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout, cfg.bias)
        self.add_norm2 = AddNorm(cfg.d_model, cfg.dropout, cfg.norm_first, cfg.layer_norm_eps)
        self.ffn = PositionwiseFeedForward(cfg.d_model, cfg.d_ff, ffn_dropout, cfg.activation, cfg.bias)
        self.add_norm3 = AddNorm(cfg.d_model, cfg.dropout, cfg.norm_first, cfg.layer_norm_eps)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        src_mask: Tensor | None,
        tgt_mask: Tensor | None,
        need_weights: bool = False,
        cache: KVCache | None = None,
        cache_pos: int = 0,
        memory_kv: tuple[Tensor, Tensor] | None = None,
        packing: Packing | None = None,
        memory_packing: Packing | None = None,
        memory_groups: int = 1,
        memory_lengths: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        # x: (B, T, d_model); memory: (B, S, d_model); tgt_mask: (B, 1, T, T) or None with a cache.
        # Packed (training): x (N, d_model) and memory (N_s, d_model) hold the real tokens only.
        # memory_groups g > 1 (beam search): x has g rows per memory row, (B * g, T, d_model).
        # memory_lengths (B,): the real tokens of each memory row, a prefix (decoding: see TransformerState).
        self_weights = cross_weights = None

        def self_attend(h: Tensor) -> Tensor:
            nonlocal self_weights
            h, self_weights = self.self_attn(
                h, mask=tgt_mask, need_weights=need_weights, cache=cache, cache_pos=cache_pos, packing=packing
            )
            return h

        def cross_attend(h: Tensor) -> Tensor:
            nonlocal cross_weights
            if memory_groups > 1:  # the g rows of one source attend to it as g x T queries of one row
                rows, t, d = h.shape
                out, w = self.cross_attn(h.reshape(rows // memory_groups, memory_groups * t, d), memory=memory,
                                         mask=src_mask, need_weights=need_weights, memory_kv=memory_kv,
                                         key_lengths=memory_lengths)
                if w is not None:  # (B, H, g * T, S) -> (B * g, H, T, S)
                    b, heads, _, s = w.shape
                    w = w.view(b, heads, memory_groups, t, s).transpose(1, 2).reshape(rows, heads, t, s)
                cross_weights = w
                return out.reshape(rows, t, d)
            h, cross_weights = self.cross_attn(
                h, memory=memory, mask=src_mask, need_weights=need_weights, memory_kv=memory_kv,
                packing=packing, memory_packing=memory_packing, key_lengths=memory_lengths,
            )
            return h

        x = self.block(x, self_attend, cross_attend, self.ffn, (self.add_norm1, self.add_norm2, self.add_norm3))
        return x, self_weights, cross_weights

    @staticmethod
    def block(x: Tensor, self_attend: Sublayer, cross_attend: Sublayer, feed_forward: Sublayer,
              add_norms: tuple[AddNormFn, AddNormFn, AddNormFn]) -> Tensor:
        """(10)-(15), the one definition of a decoder layer: masked self-attention, add & norm,
        encoder-decoder attention, add & norm, feed-forward, add & norm. `forward` (training, the modules'
        decoding path), the lean CPU decoder step (attnlab.models.transformer_step) and the ONNX export
        (attnlab.export.onnx) all run it, each with its own implementation of the sub-layers (module calls,
        C kernels over a KV cache, tensors a graph can hold) and of add & norm (`add_norm(x, sublayer)`)."""
        add_norm1, add_norm2, add_norm3 = add_norms
        x = add_norm1(x, self_attend)
        x = add_norm2(x, cross_attend)
        return add_norm3(x, feed_forward)


class Encoder(nn.Module):
    """A stack of N encoder layers (plus a final LayerNorm in the pre-norm variant)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.norm_first else nn.Identity()

    def forward(self, x: Tensor, src_mask: Tensor | None, need_weights: bool = False,
                packing: Packing | None = None) -> tuple[Tensor, list]:
        weights = []
        for layer in self.layers:
            x, w = layer(x, src_mask, need_weights, packing)
            weights.append(w)
        return self.final_norm(x), weights


class Decoder(nn.Module):
    """A stack of N decoder layers (plus a final LayerNorm in the pre-norm variant)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.norm_first else nn.Identity()

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        src_mask: Tensor | None,
        tgt_mask: Tensor | None,
        need_weights: bool = False,
        caches: list[KVCache] | None = None,
        cache_pos: int = 0,
        memory_kv: list[tuple[Tensor, Tensor]] | None = None,
        packing: Packing | None = None,
        memory_packing: Packing | None = None,
        memory_groups: int = 1,
        memory_lengths: Tensor | None = None,
    ) -> tuple[Tensor, list, list]:
        self_weights, cross_weights = [], []
        for i, layer in enumerate(self.layers):
            x, sw, cw = layer(
                x, memory, src_mask, tgt_mask, need_weights,
                cache=caches[i] if caches is not None else None,
                cache_pos=cache_pos,
                memory_kv=memory_kv[i] if memory_kv is not None else None,
                packing=packing, memory_packing=memory_packing, memory_groups=memory_groups,
                memory_lengths=memory_lengths,
            )
            self_weights.append(sw)
            cross_weights.append(cw)
        return self.final_norm(x), self_weights, cross_weights


class Transformer(nn.Module):
    """Encoder-decoder Transformer. `forward(src, tgt)` returns logits (B, T, tgt_vocab_size)."""

    # the trainer may ask for the logits of real target tokens only: forward(src, tgt, positions=...)
    trains_packed = True

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.pad_id = cfg.pad_id
        # (1) and (8): embeddings, one matrix for both sides when share_embeddings
        self.input_embedding = TokenEmbedding(cfg.src_vocab_size, cfg.d_model, cfg.pad_id, cfg.scale_embedding)
        self.output_embedding = (
            self.input_embedding if cfg.share_embeddings
            else TokenEmbedding(cfg.tgt_vocab_size, cfg.d_model, cfg.pad_id, cfg.scale_embedding)
        )
        # (2) and (9): positions
        self.src_positions = positional_encoding(cfg.positional, cfg.d_model, cfg.max_len)
        self.tgt_positions = positional_encoding(cfg.positional, cfg.d_model, cfg.max_len)
        self.embedding_dropout = Dropout(cfg.dropout)
        self.encoder = Encoder(cfg)  # (3)-(7)
        self.decoder = Decoder(cfg)  # (10)-(16)
        # (18) linear projection to the vocabulary; tied to the output embedding as in section 3.4
        # (Marian adds a fixed bias to the logits, its final_logits_bias: cfg.output_bias)
        self.output_projection = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=cfg.output_bias)
        if cfg.output_bias:
            nn.init.zeros_(self.output_projection.bias)
        if cfg.tie_output:
            self.output_projection.weight = self.output_embedding.weight
        else:
            nn.init.normal_(self.output_projection.weight, std=cfg.d_model**-0.5)
        if cfg.zero_start_id is not None:  # Marian's decoder start: the first input is the position encoding alone
            hold_row_at_zero(self.output_embedding.weight, cfg.zero_start_id)

    # ---- the paper's two halves -------------------------------------------------------------
    def embed_src(self, src: Tensor) -> Tensor:
        return self.embedding_dropout(self.src_positions(self.input_embedding(src)))

    def embed_tgt(self, tgt: Tensor, start: int = 0) -> Tensor:
        return self.embedding_dropout(self.tgt_positions(self.output_embedding(tgt), start))

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """src (B, S) -> memory (B, S, d_model). Padding (pad_id) is masked unless src_mask is given."""
        check_tokens("src", src, self.cfg.src_vocab_size)
        if src_mask is None:
            src_mask = padding_mask(src, self.pad_id)
        memory, _ = self.encoder(self.embed_src(src), src_mask)
        return memory

    def decode(self, memory: Tensor, src_mask: Tensor, tgt: Tensor, tgt_mask: Tensor | None = None) -> Tensor:
        """(17) decoder states (B, T, d_model) for target prefix tgt (B, T) attending to memory."""
        check_tokens("tgt", tgt, self.cfg.tgt_vocab_size)
        if tgt_mask is None:
            tgt_mask = decoder_self_mask(tgt, self.pad_id)
        h, _, _ = self.decoder(self.embed_tgt(tgt), memory, src_mask, tgt_mask)
        return h

    def forward(self, src: Tensor, tgt: Tensor, positions: Tensor | None = None, return_hidden: bool = False) -> Tensor:
        """src (B, S), tgt (B, T) int64 -> logits (B, T, tgt_vocab_size); position t predicts tgt[t+1].

        With `positions` (B, T) bool (training: where the shifted target is a real token, a prefix of
        each row), only those logits are returned, (N, tgt_vocab_size) in row-major order, and every
        position-wise layer runs on the real tokens alone (attnlab.layers.packing): the same values
        as `forward(src, tgt)[positions]`, without the work spent on padding.

        With `return_hidden`, the decoder states (17) are returned instead of the logits (the trainer
        then applies the output projection inside the loss, attnlab.training.loss).
        """
        check_tokens("src", src, self.cfg.src_vocab_size)
        if tgt.dim() == 2 and src.dim() == 2 and tgt.size(0) != src.size(0):
            raise ValueError(f"src and tgt batch sizes differ: {src.size(0)} != {tgt.size(0)}")
        if positions is not None:
            h = self._forward_packed(src, tgt, positions)
        else:
            src_mask = padding_mask(src, self.pad_id)
            h = self.decode(self.encode(src, src_mask), src_mask, tgt)
        return h if return_hidden else self.output_projection(h)

    def _forward_packed(self, src: Tensor, tgt: Tensor, positions: Tensor) -> Tensor:
        check_tokens("tgt", tgt, self.cfg.tgt_vocab_size)
        if positions.shape != tgt.shape:
            raise ValueError(f"positions must have the shape of tgt {tuple(tgt.shape)}, got {tuple(positions.shape)}")
        src_packing, tgt_packing = Packing(src != self.pad_id), Packing(positions)
        src_mask = src_packing.key_mask  # (B, 1, 1, S)
        # the kept target positions are a prefix of each row, so causal & kept-keys is the padded mask
        tgt_mask = tgt_packing.key_mask & causal_mask(tgt.size(1), tgt.device)  # (B, 1, T, T)
        x = self.embedding_dropout(src_packing.pack(self.src_positions(self.input_embedding(src))))  # (N_s, d)
        memory, _ = self.encoder(x, src_mask, packing=src_packing)
        y = self.embedding_dropout(tgt_packing.pack(self.tgt_positions(self.output_embedding(tgt))))  # (N_t, d)
        h, _, _ = self.decoder(y, memory, src_mask, tgt_mask, packing=tgt_packing, memory_packing=src_packing)
        return h  # (N_t, d_model)

    def output_probabilities(self, src: Tensor, tgt: Tensor) -> Tensor:
        """(19)-(20): softmax over the vocabulary, (B, T, tgt_vocab_size)."""
        return self.forward(src, tgt).float().softmax(dim=-1)

    # ---- attention pictures ----------------------------------------------------------------
    @torch.no_grad()
    def attention_maps(self, src: Tensor, tgt: Tensor) -> dict[str, Tensor]:
        """Teacher-forced pass returning every layer's per-head weights:
        encoder (L, B, H, S, S), decoder_self (L, B, H, T, T), cross (L, B, H, T, S)."""
        check_tokens("src", src, self.cfg.src_vocab_size)
        check_tokens("tgt", tgt, self.cfg.tgt_vocab_size)
        src_mask = padding_mask(src, self.pad_id)
        memory, enc_w = self.encoder(self.embed_src(src), src_mask, need_weights=True)
        _, self_w, cross_w = self.decoder(
            self.embed_tgt(tgt), memory, src_mask, decoder_self_mask(tgt, self.pad_id), need_weights=True
        )
        return {"encoder": torch.stack(enc_w), "decoder_self": torch.stack(self_w), "cross": torch.stack(cross_w)}

    # ---- decoding protocol -----------------------------------------------------------------
    def encode_source(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S) -> memory (B, S, d_model) and the mask of its keys (B, 1, 1, S), True = real."""
        memory, src_mask, _ = self._encode_for_decoding(src)
        return memory, src_mask

    def _encode_for_decoding(self, src: Tensor) -> tuple[Tensor, Tensor, tuple[Packing, Tensor] | None]:
        """Encode for decoding: when the batch holds padding, the position-wise layers run on the real
        source tokens only (as training does, attnlab.layers.packing), which a batch of sentences of
        mixed lengths roughly halves. Returns memory (B, S, d_model, zeros at the pads), the key mask,
        and (packing, packed memory (N, d_model)) when packed, so that the encoder-decoder keys and
        values can be projected from the real tokens too."""
        check_tokens("src", src, self.cfg.src_vocab_size)
        keep = src != self.pad_id
        if bool(keep.all()) or not bool(keep.any()):
            src_mask = keep[:, None, None, :]
            memory, _ = self.encoder(self.embed_src(src), src_mask)  # src already checked above
            return memory, src_mask, None
        packing = Packing(keep)
        x = self.embedding_dropout(packing.pack(self.src_positions(self.input_embedding(src))))  # (N, d)
        packed, _ = self.encoder(x, packing.key_mask, packing=packing)
        return packing.unpack(packed), packing.key_mask, (packing, packed)

    def init_decode(self, src: Tensor, max_len: int = 128, use_cache: bool = True) -> TransformerState:
        """Encode src once; with `use_cache`, also allocate self-attention caches and project the
        encoder-decoder keys/values once per source."""
        memory, src_mask, packed = self._encode_for_decoding(src)
        state = TransformerState(memory, src_mask, fast_epoch=new_epoch())
        if use_cache:
            state.src_lengths = prefix_lengths(src_mask)
            b = memory.size(0)
            state.caches = [
                KVCache(b, self.cfg.n_heads, max_len, self.cfg.head_dim, memory.dtype, memory.device)
                for _ in self.decoder.layers
            ]
            state.memory_kv = [layer.cross_attn.project_kv(memory if packed is None else packed[1],
                                                           None if packed is None else packed[0])
                               for layer in self.decoder.layers]
        return state

    def decode_step(
        self, tokens: Tensor, state: TransformerState, need_weights: bool = False
    ) -> tuple[Tensor, TransformerState, Tensor | None]:
        """tokens: the whole prefix so far (B, t), BOS first. Returns next-token logits (B, V), the
        state, and with `need_weights` the cross-attention of the new token (B, n_layers, H, S)."""
        if state.caches is not None and transformer_step.applies(self, state, need_weights):
            return transformer_step.step(self, tokens, state), state, None  # the same function, leaner on a CPU
        if state.caches is not None:
            pos = tokens.size(1) - 1
            x = self.embed_tgt(tokens[:, -1:], start=pos)  # only the newest token: (B, 1, d_model)
            with fast_decoding(state.fast_epoch):  # the CPU's prepacked linear layers (attnlab.layers.onednn)
                h, _, cross = self.decoder(
                    x, state.memory, state.src_mask, None, need_weights,
                    caches=state.caches, cache_pos=pos, memory_kv=state.memory_kv, memory_groups=state.group,
                    memory_lengths=state.src_lengths,
                )
                logits = linear(self.output_projection, h[:, -1])
        else:  # recompute the whole prefix (the reference the cache must equal)
            memory, src_mask = state.memory_per_row()
            h, _, cross = self.decoder(
                self.embed_tgt(tokens), memory, src_mask, decoder_self_mask(tokens, self.pad_id), need_weights,
            )
            logits = self.output_projection(h[:, -1])
        weights = torch.stack([w[:, :, -1] for w in cross], dim=1) if need_weights else None
        return logits, state, weights

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
