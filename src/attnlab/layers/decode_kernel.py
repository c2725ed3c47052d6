"""The decoder step's attention on the CPU: a small C kernel (decode_attention.c), compiled once per
machine, that PyTorch's fused kernel is slow at.

At a decoding step each hypothesis has one query, and PyTorch's fused CPU attention spends most of
its time per (row, head) pair rather than per key, and reads the padding keys of the source as well.
The kernel reads each row's real keys once, all heads together, on PyTorch's own OpenMP threads.
Measured on a 2-core AMD EPYC (`small` model, 100 x 1 queries over 35 keys): 262 -> 98 us for the
encoder-decoder attention; a greedy decode of 100 sentences x 32 tokens 0.60 -> 0.51 s (benchmarks:
`attnlab bench decode`). The result is the same function in float32 (rounding differences, ~1e-7).

It is compiled once per machine by attnlab.layers.cpu_kernels (the system's C compiler, kept in
`~/.cache/attnlab`). Where that cannot happen (no compiler, not Linux, a PyTorch without GNU OpenMP,
`ATTNLAB_KERNELS=0`), `kernel()` is None, `applies` is False and the caller uses PyTorch's kernels:
nothing else changes.
"""
from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from attnlab.layers.cpu_kernels import Kernels
from attnlab.layers.dropout import cpu_fp32

_p, _i64 = ctypes.c_void_p, ctypes.c_int64
KERNELS = Kernels("decode_attention.c", "decoding attention kernel", {
    "attnlab_decode_attention": ([_p, _i64, _i64, _i64, _p, _i64, _i64, _i64, _p, _i64, _i64, _i64, _p, _i64, _p,
                                  _i64, _i64, _i64, _i64, ctypes.c_float], None)})


def kernel():
    """The compiled function, or None where it cannot be had (loaded once per process)."""
    fns = KERNELS.get()
    return None if fns is None else fns.attnlab_decode_attention


def applies(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """CPU float32 inference (`cpu_fp32`, nothing that wants gradients) on (B, H, T, D) queries and
    (B, H, S, D) keys/values with contiguous last dimensions: the kernel's case."""
    return (
        cpu_fp32(q)
        and k.dtype == v.dtype == torch.float32
        and q.dim() == k.dim() == v.dim() == 4
        and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
        and kernel() is not None
    )


def decode_attention(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d_k)) v for q (B, H, T, D) and k, v (B, H, S, D), where row b attends to its
    first lengths[b] keys (all S when None); returns the heads concatenated, (B, T, H * D). Call only
    where `applies(q, k, v)`."""
    b, h, t, d = q.shape
    s = k.size(2)
    if k.shape != (b, h, s, d) or v.shape != (b, h, s, d):
        raise ValueError(f"decode_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit")
    if lengths is not None:
        if lengths.shape != (b,):
            raise ValueError(f"decode_attention: lengths must have shape ({b},), got {tuple(lengths.shape)}")
        lengths = lengths.to(torch.int64).contiguous()
    out = q.new_empty(b, t, h * d)
    kernel()(q.data_ptr(), q.stride(0), q.stride(1), q.stride(2),
             k.data_ptr(), k.stride(0), k.stride(1), k.stride(2),
             v.data_ptr(), v.stride(0), v.stride(1), v.stride(2),
             None if lengths is None else lengths.data_ptr(), s,
             out.data_ptr(), b, h, t, d, d ** -0.5)
    return out
