"""Input/output embeddings and positional encodings (paper, sections 3.4 and 3.5).

Place in the layering: layers; imports only from io and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class TokenEmbedding(nn.Module):
    """Token ids -> vectors, multiplied by sqrt(d_model) as in section 3.4."""

    def __init__(self, vocab_size: int, d_model: int, pad_id: int | None = None, scale: bool = True):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.scale = math.sqrt(d_model) if scale else 1.0
        # N(0, d_model^-0.5): with the sqrt(d_model) scale the embedded tokens have unit variance,
        # and the matrix is a sensible output projection when tied (fairseq's choice).
        nn.init.normal_(self.embedding.weight, mean=0.0, std=d_model**-0.5)
        if pad_id is not None:
            with torch.no_grad():
                self.embedding.weight[pad_id].zero_()

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def forward(self, tokens: Tensor) -> Tensor:
        # (B, T) -> (B, T, d_model)
        return self.embedding(tokens) * self.scale


class _ZeroRowGradient:
    """A gradient hook: the gradient of one row set to zero (a class, not a lambda, so a model pickles)."""

    def __init__(self, row: int):
        self.row = row

    def __call__(self, grad: Tensor) -> Tensor:
        grad = grad.clone()
        grad[self.row] = 0
        return grad


def hold_row_at_zero(weight: nn.Parameter, row: int) -> None:
    """Set `weight[row]` to zero and keep it there through training: its gradient is zeroed (a hook on the
    parameter, so every use counts, e.g. a tied output projection), so Adam's moments stay zero and the
    update is exactly zero; weight decay (L2 or decoupled) of a zero row is zero too."""
    with torch.no_grad():
        weight[row].zero_()
    weight.register_hook(_ZeroRowGradient(row))


def sinusoidal_table(length: int, d_model: int, offset: int = 0) -> Tensor:
    """The paper's table: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).

    Interleaved: even feature indices hold sines, odd ones cosines. (length, d_model) float32.
    """
    position = torch.arange(offset, offset + length, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)
    angle = position / torch.pow(10000.0, two_i / d_model)
    table = torch.zeros(length, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return table.float()


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal encoding (section 3.5). Extends itself for longer inputs."""

    def __init__(self, d_model: int, max_len: int = 1024):
        super().__init__()
        self.d_model = d_model
        self.register_buffer("table", sinusoidal_table(max_len, d_model), persistent=False)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        # x: (B, T, d_model); positions start, ..., start + T - 1
        end = start + x.size(1)
        if end > self.table.size(0):  # never refuse a long input: the formula has no limit
            self.table = sinusoidal_table(max(end, 2 * self.table.size(0)), self.d_model).to(self.table.device)
        return x + self.table[start:end].to(x.dtype)


class LearnedPositionalEncoding(nn.Module):
    """Learned position embeddings (the paper's alternative, Table 3 row E)."""

    def __init__(self, d_model: int, max_len: int = 1024):
        super().__init__()
        self.max_len = max_len
        self.embedding = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.embedding.weight, mean=0.0, std=d_model**-0.5)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        end = start + x.size(1)
        if end > self.max_len:
            raise ValueError(f"sequence of length {end} exceeds max_len {self.max_len} of learned positions")
        positions = torch.arange(start, end, device=x.device)
        return x + self.embedding(positions).to(x.dtype)


class NoPositionalEncoding(nn.Module):
    """Identity: a bag-of-tokens model (used to show what positions add)."""

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        return x


def positional_encoding(kind: str, d_model: int, max_len: int) -> nn.Module:
    if kind == "sinusoidal":
        return SinusoidalPositionalEncoding(d_model, max_len)
    if kind == "learned":
        return LearnedPositionalEncoding(d_model, max_len)
    if kind == "none":
        return NoPositionalEncoding()
    raise ValueError(f"unknown positional encoding {kind!r}")


class PatchEmbedding(nn.Module):
    """ViT's patch embedding (Dosovitskiy et al. 2021): cut the image into P x P patches and project
    each flattened patch linearly to d_model, as one strided convolution.

    (B, 3, H, W) -> (B, (H / P) * (W / P), d_model), patches in row-major order.
    """

    def __init__(self, image_size: int, patch_size: int, d_model: int, in_channels: int = 3):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        self.grid_shape = (image_size // patch_size, image_size // patch_size)
        self.proj = nn.Conv2d(in_channels, d_model, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, d_model, h, w) -> (B, h*w, d_model)
