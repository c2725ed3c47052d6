"""Dropout (paper, section 5.4: P_drop = 0.1 on every sub-layer output and on the embedding sums).

Same function as torch.nn.Dropout: during training each element is zeroed with probability p and
the survivors are scaled by 1 / (1 - p); in eval mode it is the identity. On the CPU the mask is
drawn differently: PyTorch's `bernoulli_` draws one float per element from the CPU generator, which
makes dropout one of the most expensive operations of a bf16 training step; here the mask comes from
15-bit random integers, four per 64-bit draw of `random_` (an int64 draw viewed as four int16, each
masked to its low 15 bits: ~7x fewer generator calls than one float per element, 2.7x fewer than one
31-bit integer per element; p is resolved to 2^-15), is kept as bool (1 byte per element instead of
2-4), and applied with an in-place fill.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cpu_fp32(x: Tensor) -> bool:
    """Whether attnlab's hand-written CPU functions apply to `x`: CPU, float32, outside autocast and
    outside torch.compile's / torch.jit's tracing (which see through plain ops)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing())


def cpu_fp32_training(x: Tensor) -> bool:
    """`cpu_fp32(x)` with gradients on: where the fused feed-forward network (attnlab.layers.feed_forward)
    applies, which is written for training."""
    return cpu_fp32(x) and torch.is_grad_enabled()


def drop_mask(shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """Bool mask of `shape`, True with probability p (resolved to 2^-15)."""
    n = math.prod(shape)
    # random_() on int64 draws from [0, 2^63): the four int16 lanes of a draw are uniform on their low 15 bits
    draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_()
    lanes = draws.view(torch.int16)[:n].bitwise_and_(0x7FFF)
    return (lanes < int(round(p * 2**15))).view(shape)


class _CPUDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:  # type: ignore[override]
        drop = drop_mask(x.shape, p, x.device)
        scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(drop)
        ctx.scale = scale
        return x.mul(scale).masked_fill_(drop, 0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (drop,) = ctx.saved_tensors
        return grad.mul(ctx.scale).masked_fill_(drop, 0), None


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """F.dropout(x, p, training), with the faster mask on the CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0 or torch.compiler.is_compiling():
        return F.dropout(x, p, training)
    return _CPUDropout.apply(x, p)


class Dropout(nn.Dropout):
    """torch.nn.Dropout with attnlab's faster CPU mask (a drop-in: same arguments, same state)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)
