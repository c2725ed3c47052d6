"""Position-wise feed-forward network (paper, section 3.3): FFN(x) = max(0, x W1 + b1) W2 + b2.

The activation may also be GELU or SiLU (swish, x * sigmoid(x): Marian's opus-mt models).

With dropout on the hidden activations (as torch.nn.Transformer has), CPU fp32 training runs the
network as one function: the dropped units are zeroed in place before the ReLU, the 1 / (1 - p) scale
rides on the second matmul (its alpha, forward and backward), and backward needs no mask: a hidden unit
passes gradient where its dropped-out activation is positive. That is 2 passes over the (N, d_ff)
activations forward and 1 backward instead of 3 and 3, and no saved dropout mask.

Place in the layering: layers; imports only from io and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from attnlab.layers.dropout import Dropout, cpu_fp32_training, drop_relu_
from attnlab.layers.onednn import linear


def _matmul(a: Tensor, b: Tensor, alpha: float = 1.0, bias: Tensor | None = None) -> Tensor:
    """bias + alpha * a @ b in one matmul call (no bias: beta = 0 on a zero that is never read)."""
    if bias is None:
        return torch.addmm(a.new_zeros(()).expand(a.size(0), b.size(1)), a, b, beta=0, alpha=alpha)
    return torch.addmm(bias, a, b, alpha=alpha)


class _ReluDropoutFFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,  # type: ignore[override]
                p: float) -> Tensor:
        hidden = _matmul(x, w1.t(), bias=b1)  # (N, d_ff)
        drop_relu_(hidden, p)  # dropped, unscaled
        scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(x, w1, w2, hidden)
        ctx.scale, ctx.biases = scale, (b1 is not None, b2 is not None)
        return _matmul(hidden, w2.t(), alpha=scale, bias=b2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, w1, w2, hidden = ctx.saved_tensors
        grad = grad.contiguous()
        need = ctx.needs_input_grad
        g_w2 = _matmul(grad.t(), hidden, alpha=ctx.scale) if need[3] else None
        g_b2 = grad.sum(0) if need[4] and ctx.biases[1] else None
        # through the dropout (scale) and the ReLU: zero where the dropped-out activation is not positive
        g_hidden = _matmul(grad, w2, alpha=ctx.scale)
        torch.ops.aten.threshold_backward.grad_input(g_hidden, hidden, 0, grad_input=g_hidden)  # in place
        g_x = torch.mm(g_hidden, w1) if need[0] else None
        g_w1 = torch.mm(g_hidden.t(), x) if need[1] else None
        g_b1 = g_hidden.sum(0) if need[2] and ctx.biases[0] else None
        return g_x, g_w1, g_b1, g_w2, g_b2, None


class PositionwiseFeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "relu", bias: bool = True):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff, bias=bias)
        self.linear2 = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = Dropout(dropout)
        self.activation = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}[activation]

    def _fused_training(self, x: Tensor) -> bool:
        return (cpu_fp32_training(x) and self.linear1.weight.dtype == torch.float32
                and 0.0 < self.dropout.p < 1.0 and not self.dropout.inplace)

    def forward(self, x: Tensor) -> Tensor:
        # (B, T, d_model) -> (B, T, d_ff) -> (B, T, d_model)
        if self.activation is F.relu and not (self.training and self.dropout.p > 0):
            return linear(self.linear2, linear(self.linear1, x, relu=True))  # ReLU fused when decoding
        if self.activation is F.relu and self._fused_training(x):
            rows = x.reshape(-1, x.size(-1))
            out = _ReluDropoutFFN.apply(rows, self.linear1.weight, self.linear1.bias, self.linear2.weight,
                                        self.linear2.bias, self.dropout.p)
            return out.view(*x.shape[:-1], out.size(-1))
        return linear(self.linear2, self.dropout(self.activation(linear(self.linear1, x))))
