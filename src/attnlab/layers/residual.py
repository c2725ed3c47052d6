"""Add & Norm (paper, section 3.1): LayerNorm(x + Sublayer(x)), with dropout on the sub-layer output.

Post-norm (the paper): LayerNorm(x + Dropout(Sublayer(x))).
Pre-norm (an option; trains deep stacks without warm-up tricks): x + Dropout(Sublayer(LayerNorm(x))).

Place in the layering: layers; imports only from io and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from attnlab.layers.dropout import Dropout


class AddNorm(nn.Module):
    def __init__(self, d_model: int, dropout: float = 0.0, norm_first: bool = False, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))
