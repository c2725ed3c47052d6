"""Model configurations as dataclasses, saved inside every checkpoint (nanoGPT habit).

`TransformerConfig.preset("base")` and `("big")` are the sizes of Vaswani et al. 2017, Table 3.
The small presets are sized for a laptop CPU.

Place in the layering: layers; imports only from io and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Table 3 of the paper, plus CPU-sized presets. Values not listed keep the dataclass defaults.
TRANSFORMER_PRESETS: dict[str, dict[str, Any]] = {
    "base": dict(d_model=512, n_heads=8, n_layers=6, d_ff=2048, dropout=0.1),
    "big": dict(d_model=1024, n_heads=16, n_layers=6, d_ff=4096, dropout=0.3),
    # a small translator that trains on Multi30k on a CPU in under an hour
    "small": dict(d_model=256, n_heads=4, n_layers=3, d_ff=1024, dropout=0.1),
    # generated tasks and demos: trains in a couple of minutes on a CPU
    "tiny": dict(d_model=128, n_heads=4, n_layers=2, d_ff=512, dropout=0.1),
    # unit tests
    "test": dict(d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0),
}


ACTIVATIONS = ("relu", "gelu", "silu")  # attnlab.layers.feed_forward


@dataclass
class TransformerConfig:
    """Hyper-parameters of the encoder-decoder Transformer (paper names)."""

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 6
    # None = n_layers (the paper uses N=6 for both stacks)
    n_encoder_layers: int | None = None
    n_decoder_layers: int | None = None
    d_ff: int = 2048
    dropout: float = 0.1  # P_drop: on each sub-layer output and on the embedding sums
    attn_dropout: float = 0.0  # on attention probabilities (not in the paper; tensor2tensor has it)
    ffn_dropout: float | None = None  # inside the FFN after the activation; None = dropout
    activation: str = "relu"  # "relu" (paper), "gelu", or "silu" (swish: x * sigmoid(x), Marian's opus-mt)
    norm_first: bool = False  # False = post-norm as in the paper; True = pre-norm
    layer_norm_eps: float = 1e-5
    positional: str = "sinusoidal"  # "sinusoidal" (paper), "learned", or "none"
    max_len: int = 1024  # longest sequence for learned positions; sinusoids extend on demand
    share_embeddings: bool = False  # one embedding matrix for source and target (needs one vocabulary)
    tie_output: bool = True  # output projection shares the target embedding matrix (paper, 3.4)
    scale_embedding: bool = True  # multiply embeddings by sqrt(d_model) (paper, 3.4)
    bias: bool = True
    output_bias: bool = False  # a bias on the output projection (Marian's final_logits_bias)
    pad_id: int = 0
    # Marian's decoder start: the target embedding row of this token (attnlab's <s>) is held at zero, so the
    # decoder's first input is the position encoding alone; CTranslate2 converts such a model exactly (its
    # Marian loader always starts from a zero embedding). None = a learned <s> embedding (models before it).
    zero_start_id: int | None = None
    arch: str = field(default="transformer", repr=False)

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.positional not in ("sinusoidal", "learned", "none"):
            raise ValueError(f"positional must be 'sinusoidal', 'learned' or 'none', got {self.positional!r}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.attn_dropout < 1.0:
            raise ValueError("dropout probabilities must be in [0, 1)")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                "share_embeddings needs one vocabulary: src_vocab_size "
                f"{self.src_vocab_size} != tgt_vocab_size {self.tgt_vocab_size}"
            )
        if not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab_size):
            raise ValueError(f"pad_id {self.pad_id} is outside the vocabulary")
        if self.zero_start_id is not None and not 0 <= self.zero_start_id < self.tgt_vocab_size:
            raise ValueError(f"zero_start_id {self.zero_start_id} is outside the target vocabulary")

    @property
    def encoder_layers(self) -> int:
        return self.n_encoder_layers or self.n_layers

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layers or self.n_layers

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "TransformerConfig":
        """A named size (`base`, `big` from the paper; `small`, `tiny`, `test` for CPUs)."""
        if name not in TRANSFORMER_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(TRANSFORMER_PRESETS)}")
        values = dict(src_vocab_size=32000, tgt_vocab_size=32000)
        values.update(TRANSFORMER_PRESETS[name])
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TransformerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields: {sorted(unknown)}")
        return cls(**values)
