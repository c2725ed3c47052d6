"""The RNN decoders of attnlab.models.rnn, one class per paper, and the state they carry between steps.

    FixedContextDecoder   Cho et al. 2014 (one fixed-length context vector c)
    BahdanauDecoder       Bahdanau et al. 2014 (additive attention, query s_{t-1})
    LuongDecoder          Luong et al. 2015 (dot / general attention, query s_t, input feeding)

Each takes the target embeddings of a prefix and returns (o, weights, final hidden, feed); the formulas
are in attnlab.models.rnn's docstring. Place in the layering: models (imports attnlab.layers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import torch
from torch import Tensor, nn

from attnlab.layers.attention import AdditiveAttention, DotAttention, GeneralAttention

if TYPE_CHECKING:
    from attnlab.models.rnn import RNNConfig

Hidden = Union[Tensor, tuple[Tensor, Tensor]]  # GRU: h (L, B, d_hidden); LSTM: (h, c)


def make_rnn(cell: str, input_size: int, hidden_size: int, n_layers: int, dropout: float,
             bidirectional: bool = False) -> nn.Module:
    rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
    return rnn(input_size, hidden_size, n_layers, batch_first=True,
               dropout=dropout if n_layers > 1 else 0.0, bidirectional=bidirectional)


def top_state(hidden: Hidden) -> Tensor:
    """The top layer's output state s_t (B, d_hidden) of a GRU state or an LSTM's (h, c)."""
    return (hidden[0] if isinstance(hidden, tuple) else hidden)[-1]


def select_rows(hidden: Hidden, index: Tensor) -> Hidden:
    if isinstance(hidden, tuple):
        return tuple(h.index_select(1, index) for h in hidden)  # type: ignore[return-value]
    return hidden.index_select(1, index)


@dataclass
class RNNState:
    """What the decoder carries between steps. `reorder` follows beam search's parent pointers.

    With `use_cache` the decoder state advances one token per `decode_step`; without, `hidden` and
    `feed` stay at their step-0 values and every call replays the whole prefix.
    """

    memory: Tensor  # (B, S, d_hidden) encoder states h_1..h_S
    src_mask: Tensor  # (B, S) bool, True = real source token
    hidden: Hidden  # decoder RNN state s, (n_layers, B, d_hidden) (and the LSTM cell)
    context: Tensor | None = None  # fixed-context models: c (B, d_hidden)
    precomputed: Tensor | None = None  # attention's per-source term, e.g. W_h h (B, S, d_attn)
    feed: Tensor | None = None  # Luong input feeding: h~_{t-1} (B, d_hidden)
    steps: int = 0  # target tokens consumed so far
    use_cache: bool = True

    @property
    def batch_size(self) -> int:
        return self.memory.size(0)

    def reorder(self, index: Tensor) -> "RNNState":
        index = index.to(self.memory.device)
        self.memory = self.memory.index_select(0, index)
        self.src_mask = self.src_mask.index_select(0, index)
        self.hidden = select_rows(self.hidden, index)
        for name in ("context", "precomputed", "feed"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, index))
        return self


class FixedContextDecoder(nn.Module):
    """Cho et al. 2014: s_t = f(s_{t-1}, [E y_{t-1}; c]), o_t = tanh(W_o [s_t; c; E y_{t-1}]).

    c is the same at every step, so the whole target runs through the RNN in one call.
    """

    attends = False

    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.rnn = make_rnn(cfg.cell, cfg.d_embed + cfg.d_hidden, cfg.d_hidden, cfg.n_layers, cfg.dropout)
        self.readout = nn.Linear(2 * cfg.d_hidden + cfg.d_embed, cfg.d_hidden)  # W_o

    def start(self, state: RNNState) -> None:
        state.context = top_state(state.hidden)  # c: the encoder's final (top-layer) state

    def forward(self, emb: Tensor, hidden: Hidden, feed: Tensor | None, state: RNNState):
        # emb (B, T, d_embed) -> o (B, T, d_hidden), no weights, final hidden, no feed
        c = state.context.unsqueeze(1).expand(-1, emb.size(1), -1)  # (B, T, d_hidden)
        s, hidden = self.rnn(torch.cat([emb, c], dim=-1), hidden)  # (B, T, d_hidden)
        o = torch.tanh(self.readout(torch.cat([s, c, emb], dim=-1)))
        return o, None, hidden, None


class BahdanauDecoder(nn.Module):
    """Bahdanau et al. 2014: c_t = attend(s_{t-1}, h), s_t = f(s_{t-1}, [E y_{t-1}; c_t]),
    o_t = tanh(W_o [s_t; c_t; E y_{t-1}]), with additive attention."""

    attends = True

    def __init__(self, cfg: RNNConfig):
        super().__init__()
        d = cfg.d_hidden
        self.attention = AdditiveAttention(d, d, d)
        self.rnn = make_rnn(cfg.cell, cfg.d_embed + d, d, cfg.n_layers, cfg.dropout)
        self.readout = nn.Linear(2 * d + cfg.d_embed, d)  # W_o

    def start(self, state: RNNState) -> None:
        state.precomputed = self.attention.precompute(state.memory)  # W_h h_j + b, once per source

    def forward(self, emb: Tensor, hidden: Hidden, feed: Tensor | None, state: RNNState):
        # emb (B, T, d_embed) -> o (B, T, d_hidden), weights (B, T, S), final hidden, no feed
        outputs, weights = [], []
        for t in range(emb.size(1)):
            e = emb[:, t]  # (B, d_embed)
            c, w = self.attention(top_state(hidden), state.memory, state.src_mask, state.precomputed)
            s, hidden = self.rnn(torch.cat([e, c], dim=-1).unsqueeze(1), hidden)
            outputs.append(torch.tanh(self.readout(torch.cat([s[:, 0], c, e], dim=-1))))
            weights.append(w)
        return torch.stack(outputs, 1), torch.stack(weights, 1), hidden, None


class LuongDecoder(nn.Module):
    """Luong et al. 2015, global attention with input feeding: s_t = f(s_{t-1}, [E y_{t-1}; h~_{t-1}]),
    c_t = attend(s_t, h), h~_t = tanh(W_c [c_t; s_t]) (dot or general score)."""

    attends = True

    def __init__(self, cfg: RNNConfig):
        super().__init__()
        d = cfg.d_hidden
        self.attention = DotAttention(d) if cfg.attention == "luong-dot" else GeneralAttention(d, d)
        self.rnn = make_rnn(cfg.cell, cfg.d_embed + d, d, cfg.n_layers, cfg.dropout)
        self.combine = nn.Linear(2 * d, d, bias=False)  # W_c

    def start(self, state: RNNState) -> None:
        state.precomputed = self.attention.precompute(state.memory)
        state.feed = state.memory.new_zeros(state.memory.size(0), state.memory.size(2))  # h~_0 = 0

    def forward(self, emb: Tensor, hidden: Hidden, feed: Tensor | None, state: RNNState):
        # emb (B, T, d_embed) -> o (B, T, d_hidden), weights (B, T, S), final hidden, last h~
        outputs, weights = [], []
        for t in range(emb.size(1)):
            s, hidden = self.rnn(torch.cat([emb[:, t], feed], dim=-1).unsqueeze(1), hidden)
            s = s[:, 0]  # (B, d_hidden)
            c, w = self.attention(s, state.memory, state.src_mask, state.precomputed)
            feed = torch.tanh(self.combine(torch.cat([c, s], dim=-1)))  # h~_t
            outputs.append(feed)
            weights.append(w)
        return torch.stack(outputs, 1), torch.stack(weights, 1), hidden, feed


def make_decoder(cfg: RNNConfig) -> nn.Module:
    if cfg.attention is None:
        return FixedContextDecoder(cfg)
    if cfg.attention == "bahdanau":
        return BahdanauDecoder(cfg)
    return LuongDecoder(cfg)
