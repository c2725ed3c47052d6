"""Position-wise feed-forward network (paper, section 3.3): FFN(x) = max(0, x W1 + b1) W2 + b2."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.layers.dropout import Dropout
from attnlab.layers.onednn import linear


class PositionwiseFeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "relu", bias: bool = True):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff, bias=bias)
        self.linear2 = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = Dropout(dropout)
        self.activation = F.relu if activation == "relu" else F.gelu

    def forward(self, x: Tensor) -> Tensor:
        # (B, T, d_model) -> (B, T, d_ff) -> (B, T, d_model)
        if self.activation is F.relu and not (self.training and self.dropout.p > 0):
            return linear(self.linear2, linear(self.linear1, x, relu=True))  # ReLU fused when decoding
        return linear(self.linear2, self.dropout(self.activation(linear(self.linear1, x))))
