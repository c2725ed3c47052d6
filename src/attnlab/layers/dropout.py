"""Dropout (paper, section 5.4: P_drop = 0.1 on every sub-layer output and on the embedding sums).

Same function as torch.nn.Dropout: during training each element is zeroed with probability p and
the survivors are scaled by 1 / (1 - p); in eval mode it is the identity. On the CPU the mask is
drawn differently: PyTorch's `bernoulli_` draws one float per element from the CPU generator, which
makes dropout one of the most expensive operations of a CPU training step.

- In float32 on the CPU, where attnlab's C kernels can be had (attnlab.layers.cpu_kernels), dropout is
  one pass of `dropout_kernel.c`: the mask comes from Philox4x32-10, a counter-based generator (the
  mask of element i is a function of a seed and i; the seed is one draw from PyTorch's CPU generator,
  so torch.manual_seed makes runs repeat), p resolved to 2^-16. Backward draws the same mask again
  from the seed: no mask is kept. Measured on a 2-core AMD EPYC, (1100, 512) forward + backward
  3.2 -> 0.3 ms; the feed-forward network's ReLU + dropout of (1100, 2048) in place 7.2 -> 0.6 ms.
- Elsewhere the mask comes from 15-bit random integers, four per 64-bit draw of `random_` (an int64
  draw viewed as four int16, each masked to its low 15 bits: ~7x fewer generator calls than one float
  per element; p resolved to 2^-15), is kept as bool, and applied with an in-place fill.

Place in the layering: layers; imports only from io and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.layers.cpu_kernels import Kernels

KERNELS = Kernels("dropout_kernel.c", "dropout kernel")  # argument types read from the C source


def _cpu_fp32_eager(x: Tensor) -> bool:
    """CPU, float32, outside torch.compile's / torch.jit's tracing (which see through plain ops)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing())


def cpu_fp32(x: Tensor) -> bool:
    """Whether attnlab's hand-written CPU functions apply to `x`: `_cpu_fp32_eager` and outside autocast."""
    return _cpu_fp32_eager(x) and not torch.is_autocast_enabled("cpu")


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


def kernel_applies(x: Tensor) -> bool:
    """Whether the dropout kernel takes `x`: a contiguous float32 CPU tensor, not under tracing (autocast
    does not matter: dropout is not an autocast operation), with the kernel compiled."""
    return _cpu_fp32_eager(x) and x.is_contiguous() and KERNELS.get() is not None


def new_seed() -> int:
    """A mask's seed: one 63-bit draw from PyTorch's CPU generator."""
    return int(torch.empty((), dtype=torch.int64).random_())


def _threshold(p: float) -> int:
    return int(round(p * 2**16))


def _apply(x: Tensor, out: Tensor, seed: int, p: float, scale: float, relu: bool) -> Tensor:
    KERNELS.get().attnlab_dropout(x.data_ptr(), out.data_ptr(), x.numel(), seed, _threshold(p), scale, int(relu))
    return out


def kernel_mask(shape: torch.Size | tuple[int, ...], p: float, seed: int) -> Tensor:
    """The kernel's mask for `seed` (bool, True = dropped), as a tensor: for tests and inspection."""
    bits = torch.empty(math.prod(shape), dtype=torch.int16)
    KERNELS.get().attnlab_random_bits16(bits.data_ptr(), bits.numel(), seed)
    return (bits.view(torch.uint16).to(torch.int32) < _threshold(p)).view(shape)


class _KernelDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:  # type: ignore[override]
        ctx.seed, ctx.p = new_seed(), p
        return _apply(x, torch.empty_like(x), ctx.seed, p, 1.0 / (1.0 - p), False)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous()  # the same mask, drawn again from the seed
        return _apply(grad, torch.empty_like(grad), ctx.seed, ctx.p, 1.0 / (1.0 - ctx.p), False), None


def drop_relu_(hidden: Tensor, p: float) -> Tensor:
    """In place: hidden = ReLU(hidden) with each unit zeroed with probability p, not scaled (the
    feed-forward network's fused training path carries the 1 / (1 - p))."""
    if kernel_applies(hidden):
        return _apply(hidden, hidden, new_seed(), p, 1.0, True)
    return hidden.masked_fill_(drop_mask(hidden.shape, p, hidden.device), 0).relu_()


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
    if kernel_applies(x):
        return _KernelDropout.apply(x, p)
    return _CPUDropout.apply(x, p)


class Dropout(nn.Dropout):
    """torch.nn.Dropout with attnlab's faster CPU mask (a drop-in: same arguments, same state)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)
