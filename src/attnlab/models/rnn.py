"""Recurrent encoder-decoders, the models attention was invented for.

Fixed-context (arch "rnn"): Cho et al. 2014, "Learning Phrase Representations using RNN
Encoder-Decoder", and Sutskever et al. 2014, "Sequence to Sequence Learning with Neural Networks".
The encoder reads the source; its final state is the one fixed-length vector c the decoder sees.
    encoder:  h_j = f(h_{j-1}, x_j),   c = h_S (top layer)
    decoder:  s_0 = encoder final state (every layer, Sutskever)
              s_t = f(s_{t-1}, [E y_{t-1}; c])              (Cho: c at every step)
              o_t = tanh(W_o [s_t; c; E y_{t-1}])           (Cho's readout, tanh for maxout)

Attention (arch "rnn-attn"): the decoder looks at every encoder state h_1..h_S at every step.
  Bahdanau et al. 2014, "Neural Machine Translation by Jointly Learning to Align and Translate":
              c_t = attend(s_{t-1}, h)                      (query: the previous decoder state)
              s_t = f(s_{t-1}, [E y_{t-1}; c_t])            (context fed into the RNN input)
              o_t = tanh(W_o [s_t; c_t; E y_{t-1}])
  Luong et al. 2015, "Effective Approaches to Attention-based NMT" (global attention):
              s_t = f(s_{t-1}, [E y_{t-1}; h~_{t-1}])       (input feeding, h~_0 = 0)
              c_t = attend(s_t, h)                          (query: the current decoder state)
              h~_t = tanh(W_c [c_t; s_t]),   o_t = h~_t     (the attentional hidden state)
In every model p(y_t | y_<t, x) = softmax(W_out o_t + b).

Choices not in the papers, all as in OpenNMT-py:
- A bidirectional encoder gives each direction d_hidden / 2 units, so an encoder state
  [h->_j; h<-_j] and the final state of each layer are d_hidden wide like the decoder's: the decoder
  starts from the encoder's final state (Bahdanau uses s_0 = tanh(W_s h<-_1) instead).
- Sources are right-padded; packed sequences make the encoder skip padding, so appending pad tokens
  changes nothing (tests check it). Bahdanau's readout uses s_t rather than s_{t-1}; maxout is tanh.
- Sutskever's reversed source is a data transform and is not done here.

Decoding protocol (shared by every model family, see attnlab.decoding): the RNN hidden state is
the cache. `init_decode(src, use_cache=False)` keeps only the encoder's results and replays the
whole prefix at every step, the reference the cached path must equal.

Place in the layering: models; imports only from layers and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attnlab.layers.embedding import TokenEmbedding
from attnlab.models import registry
from attnlab.models.rnn_decoders import (  # noqa: F401 (FixedContextDecoder... are part of this module's API)
    BahdanauDecoder, FixedContextDecoder, Hidden, LuongDecoder, RNNState, make_decoder, make_rnn, select_rows,
    top_state)
from attnlab.models.transformer_state import check_tokens

CELLS = ("gru", "lstm")
ATTENTIONS = (None, "bahdanau", "luong-dot", "luong-general")
ARCHS = ("rnn", "rnn-attn")

# Values not listed keep the dataclass defaults.
RNN_PRESETS: dict[str, dict[str, Any]] = {
    # unit tests
    "test": dict(d_embed=16, d_hidden=32, n_layers=1, dropout=0.0),
    # generated tasks and demos: trains in a couple of minutes on a CPU
    "tiny": dict(d_embed=64, d_hidden=128, n_layers=1, dropout=0.1),
    # a small translator for Multi30k on a CPU
    "small": dict(d_embed=256, d_hidden=256, n_layers=2, dropout=0.2),
    # the papers' sizes
    "cho": dict(d_embed=620, d_hidden=1000, n_layers=1, cell="gru", bidirectional=False, dropout=0.0),
    "sutskever": dict(d_embed=1000, d_hidden=1000, n_layers=4, cell="lstm", bidirectional=False, dropout=0.0),
    # RNNsearch: 1000 units per encoder direction and in the decoder (here 2000 = 2 x 1000 on both sides)
    "bahdanau": dict(d_embed=620, d_hidden=2000, n_layers=1, cell="gru", bidirectional=True,
                     dropout=0.0, attention="bahdanau"),
    "luong": dict(d_embed=1000, d_hidden=1000, n_layers=4, cell="lstm", bidirectional=False,
                  dropout=0.2, attention="luong-general"),
}


@dataclass
class RNNConfig:
    """Hyper-parameters of the recurrent encoder-decoders.

    `arch` and `attention` name the same choice twice, so that a checkpoint's config says which
    registry family built it: arch "rnn" is the fixed-context model (attention None); arch
    "rnn-attn" attends, with `attention` "bahdanau" (the default), "luong-dot" or "luong-general".
    Leave `arch` None and it follows `attention`. The "rnn-attn" registry family builds its configs
    with `RNNAttentionConfig`, whose arch defaults to "rnn-attn".
    """

    src_vocab_size: int
    tgt_vocab_size: int
    d_embed: int = 256
    d_hidden: int = 512  # decoder state and encoder state (both directions together)
    n_layers: int = 1  # encoder and decoder alike
    cell: str = "gru"  # "gru" (Cho et al.) or "lstm" (Sutskever et al., Luong et al.)
    bidirectional: bool = True  # the encoder (Bahdanau et al.); d_hidden / 2 units per direction
    dropout: float = 0.1  # on embeddings, between stacked layers, and before the output projection
    attention: str | None = None  # None, "bahdanau", "luong-dot", "luong-general"
    pad_id: int = 0
    tie_output: bool = False  # output projection shares the target embedding (Press & Wolf 2017)
    arch: str | None = None  # "rnn" or "rnn-attn"; None = from `attention`

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "d_embed", "d_hidden", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"RNNConfig.{name} must be a positive int, got {value!r}")
        if self.cell not in CELLS:
            raise ValueError(f"RNNConfig.cell must be 'gru' or 'lstm', got {self.cell!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(
                f"RNNConfig.attention must be None, 'bahdanau', 'luong-dot' or 'luong-general', got {self.attention!r}"
            )
        if self.arch is None:
            self.arch = "rnn" if self.attention is None else "rnn-attn"
        if self.arch not in ARCHS:
            raise ValueError(f"RNNConfig.arch must be 'rnn' or 'rnn-attn', got {self.arch!r}")
        if self.arch == "rnn-attn" and self.attention is None:
            self.attention = "bahdanau"
        if self.arch == "rnn" and self.attention is not None:
            raise ValueError(
                f"arch 'rnn' is the fixed-context model but attention={self.attention!r}; use arch 'rnn-attn'"
            )
        if not isinstance(self.bidirectional, bool) or not isinstance(self.tie_output, bool):
            raise ValueError("RNNConfig.bidirectional and tie_output must be bools")
        if self.bidirectional and self.d_hidden % 2:
            raise ValueError(
                f"a bidirectional encoder splits d_hidden between its two directions: d_hidden must be even, "
                f"got {self.d_hidden}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"RNNConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab_size):
            raise ValueError(f"pad_id {self.pad_id} is outside the vocabulary")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "RNNConfig":
        """A named size: `test`, `tiny`, `small` for CPUs; `cho`, `sutskever`, `bahdanau`, `luong`."""
        if name not in RNN_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(RNN_PRESETS)}")
        values: dict[str, Any] = dict(src_vocab_size=32000, tgt_vocab_size=32000)
        values.update(RNN_PRESETS[name])
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RNNConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown RNNConfig fields: {sorted(unknown)}")
        return cls(**values)


@dataclass
class RNNAttentionConfig(RNNConfig):
    """RNNConfig for the "rnn-attn" family: arch defaults to "rnn-attn" (and attention to "bahdanau")."""

    arch: str | None = "rnn-attn"


class RNNEncoder(nn.Module):
    """Embedding -> (bi)GRU/LSTM over the real tokens only (packed sequences)."""

    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.bidirectional = cfg.bidirectional
        self.embedding = TokenEmbedding(cfg.src_vocab_size, cfg.d_embed, cfg.pad_id, scale=False)
        self.dropout = nn.Dropout(cfg.dropout)
        directions = 2 if cfg.bidirectional else 1
        self.rnn = make_rnn(cfg.cell, cfg.d_embed, cfg.d_hidden // directions, cfg.n_layers, cfg.dropout,
                            cfg.bidirectional)

    def _join_directions(self, h: Tensor) -> Tensor:
        # (L * 2, B, d_hidden / 2), layer-major -> (L, B, d_hidden) = [forward; backward] per layer
        if not self.bidirectional:
            return h
        layers, batch, half = h.size(0) // 2, h.size(1), h.size(2)
        return h.view(layers, 2, batch, half).transpose(1, 2).reshape(layers, batch, 2 * half)

    def forward(self, src: Tensor, src_mask: Tensor) -> tuple[Tensor, Hidden]:
        """src (B, S), src_mask (B, S) -> memory (B, S, d_hidden) (zeros on padding), final state."""
        # An all-padding row still reads one (pad) token; attention masks it out entirely.
        lengths = src_mask.sum(dim=1).clamp(min=1).cpu()
        x = self.dropout(self.embedding(src))  # (B, S, d_embed)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, final = self.rnn(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        if isinstance(final, tuple):
            return memory, (self._join_directions(final[0]), self._join_directions(final[1]))
        return memory, self._join_directions(final)


class RNNEncoderDecoder(nn.Module):
    """Recurrent encoder-decoder, fixed-context or attentional. `forward(src, tgt)` returns logits
    (B, T, tgt_vocab_size); position t predicts tgt[t + 1]."""

    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.cfg = cfg
        self.pad_id = cfg.pad_id
        self.encoder = RNNEncoder(cfg)
        self.output_embedding = TokenEmbedding(cfg.tgt_vocab_size, cfg.d_embed, cfg.pad_id, scale=False)
        self.embedding_dropout = nn.Dropout(cfg.dropout)
        self.decoder = make_decoder(cfg)
        self.output_dropout = nn.Dropout(cfg.dropout)
        # softmax(W_out o_t + b); a tied W_out is the target embedding, reached through d_hidden -> d_embed
        d_out = cfg.d_embed if cfg.tie_output else cfg.d_hidden
        self.pre_output = (
            nn.Linear(cfg.d_hidden, d_out, bias=False) if d_out != cfg.d_hidden else nn.Identity()
        )
        self.output_projection = nn.Linear(d_out, cfg.tgt_vocab_size)
        if cfg.tie_output:
            self.output_projection.weight = self.output_embedding.weight

    # ---- the two halves ---------------------------------------------------------------------
    def source_mask(self, src: Tensor) -> Tensor:
        """(B, S) -> (B, S) bool, True on real tokens; checks ids and right padding."""
        check_tokens("src", src, self.cfg.src_vocab_size)
        mask = src != self.pad_id
        gaps = mask[:, 1:] & ~mask[:, :-1]  # a real token after a pad
        if bool(gaps.any()):
            row = int(gaps.any(dim=1).nonzero()[0])
            raise ValueError(f"src must be right-padded: row {row} has a real token after pad_id {self.pad_id}")
        return mask

    def encode(self, src: Tensor) -> tuple[Tensor, Hidden]:
        """src (B, S) -> memory (B, S, d_hidden), the encoder's final state (n_layers, B, d_hidden)."""
        return self.encoder(src, self.source_mask(src))

    def embed_tgt(self, tgt: Tensor) -> Tensor:
        return self.embedding_dropout(self.output_embedding(tgt))  # (B, T, d_embed)

    def generator(self, o: Tensor) -> Tensor:
        """o (..., d_hidden) -> logits (..., tgt_vocab_size)."""
        return self.output_projection(self.pre_output(self.output_dropout(o)))

    def _check_tgt(self, tgt: Tensor, batch: int, name: str = "tgt") -> None:
        check_tokens(name, tgt, self.cfg.tgt_vocab_size)
        if tgt.size(0) != batch:
            raise ValueError(f"src and {name} batch sizes differ: {batch} != {tgt.size(0)}")

    def _teacher_forced(self, src: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor | None]:
        state = self.init_decode(src)
        self._check_tgt(tgt, src.size(0))
        o, weights, _, _ = self.decoder(self.embed_tgt(tgt), state.hidden, state.feed, state)
        return o, weights

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """src (B, S), tgt (B, T) int64 -> logits (B, T, tgt_vocab_size); position t predicts tgt[t+1]."""
        o, _ = self._teacher_forced(src, tgt)
        return self.generator(o)

    # ---- attention pictures ----------------------------------------------------------------
    @torch.no_grad()
    def attention_maps(self, src: Tensor, tgt: Tensor) -> dict[str, Tensor]:
        """Teacher-forced attention over the source, as the Transformer's: cross (1, B, 1, T, S)."""
        if not self.decoder.attends:
            raise ValueError("the fixed-context model (arch 'rnn') has no attention to show")
        _, weights = self._teacher_forced(src, tgt)
        return {"cross": weights[None, :, None]}

    # ---- decoding protocol -----------------------------------------------------------------
    def init_decode(self, src: Tensor, max_len: int = 128, use_cache: bool = True) -> RNNState:
        """Encode src once; the decoder starts from the encoder's final state. `max_len` is unused:
        the RNN state does not grow."""
        src_mask = self.source_mask(src)
        memory, final = self.encoder(src, src_mask)
        state = RNNState(memory, src_mask, final, use_cache=use_cache)
        self.decoder.start(state)
        return state

    def decode_step(
        self, tokens: Tensor, state: RNNState, need_weights: bool = False
    ) -> tuple[Tensor, RNNState, Tensor | None]:
        """tokens: the whole prefix so far (B, t), BOS first. Returns next-token logits (B, V), the
        state, and with `need_weights` the attention of the new token, (B, 1, 1, S) (None for the
        fixed-context model)."""
        self._check_tgt(tokens, state.batch_size, "tokens")
        if state.use_cache:
            if tokens.size(1) != state.steps + 1:
                raise ValueError(
                    f"decode_step with a cached state takes the prefix one token longer than the last call: "
                    f"expected length {state.steps + 1}, got {tokens.size(1)}"
                )
            o, weights, state.hidden, state.feed = self.decoder(
                self.embed_tgt(tokens[:, -1:]), state.hidden, state.feed, state
            )
        else:  # replay the whole prefix from step 0 (the reference the cached path must equal)
            o, weights, _, _ = self.decoder(self.embed_tgt(tokens), state.hidden, state.feed, state)
        state.steps = tokens.size(1)
        logits = self.generator(o[:, -1])
        if need_weights and weights is not None:
            return logits, state, weights[:, -1, None, None, :]  # (B, layers=1, heads=1, S)
        return logits, state, None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


registry.register("rnn", RNNConfig, RNNEncoderDecoder, ("translation", "beam", "kv_cache"),
                  "the RNN encoder-decoder with one fixed-length context vector, which has no attention")
registry.register("rnn-attn", RNNAttentionConfig, RNNEncoderDecoder,
                  ("translation", "attention_maps", "beam", "kv_cache"), "the RNN encoder-decoder with attention")
