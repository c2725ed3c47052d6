"""The decoder step's small operations on the CPU: C kernels (decode_step.c), compiled once per machine,
for what PyTorch is slow at when each operation is this small.

- `decode_attention`: attention of each hypothesis' query over its row's real keys. PyTorch's fused CPU
  attention spends most of its time per (row, head) pair rather than per key when there is one query, and
  reads the padding keys of the source as well. Measured on a 2-core AMD EPYC (`small` model, 100 x 1
  queries over 35 keys): 262 us (PyTorch) -> 98 us (first kernel: online softmax) -> 80 us (scores four keys at
  a time, vectorised exponentials).
- `cache_attention`: self-attention of the new token over the KV cache, its key and value written into
  the cache in the same pass (84 us at 20 keys, against 112 us plus two 16 us copies).
- `add_layer_norm`: the residual add and LayerNorm in one pass (17 us vs 23-35 us for 100 x 256).
The lean decoder step (attnlab.models.transformer_step) uses all three; the modules' path uses
`decode_attention`. Each computes the same function in float32 (rounding differences, ~1e-7).

It is compiled once per machine by attnlab.layers.cpu_kernels (the system's C compiler, kept in
`~/.cache/attnlab`). Where that cannot happen (no compiler, not Linux, a PyTorch without GNU OpenMP,
`ATTNLAB_KERNELS=0`), `kernels()` and `kernel()` are None, `applies` is False and the callers use
PyTorch's kernels: nothing else changes.

Place in the layering: layers; imports only from io and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations


import torch
from torch import Tensor

from attnlab.layers.cpu_kernels import Kernels
from attnlab.layers.dropout import cpu_fp32

KERNELS = Kernels("decode_step.c", "decoding kernel")  # argument types read from the C source


def kernels():
    """The compiled functions (a namespace), or None where they cannot be had (loaded once per process)."""
    return KERNELS.get()


def kernel():
    """The compiled attention function, or None where it cannot be had."""
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


def cache_attention(qkv: Tensor, k_cache: Tensor, v_cache: Tensor, pos: int, n_heads: int) -> Tensor:
    """Self-attention of a decoder step over its KV cache: qkv (B, 3 d_model), the new token's stacked
    query, key and value (rows of unit last stride); k_cache and v_cache (B, capacity, H, d_k), contiguous.
    Writes the new key and value at `pos`, then attends each query to positions 0..pos. Returns (B, d_model).
    Needs the kernels (`kernels()` not None), float32 CPU tensors, and capacity > pos."""
    b, width = qkv.size(0), qkv.size(1) // 3
    d = width // n_heads
    if (qkv.size(1) != 3 * width or qkv.stride(1) != 1 or k_cache.shape != (b, k_cache.size(1), n_heads, d)
            or v_cache.shape != k_cache.shape or not (k_cache.is_contiguous() and v_cache.is_contiguous())
            or not 0 <= pos < k_cache.size(1)):
        raise ValueError(f"cache_attention: qkv {tuple(qkv.shape)}, caches {tuple(k_cache.shape)} / "
                         f"{tuple(v_cache.shape)} at position {pos} do not fit")
    out = qkv.new_empty(b, width)
    KERNELS.get().attnlab_cache_attention(qkv.data_ptr(), qkv.stride(0), k_cache.data_ptr(), v_cache.data_ptr(),
                                          k_cache.stride(0), pos, out.data_ptr(), b, n_heads, d, d ** -0.5)
    return out


def add_layer_norm(x: Tensor, y: Tensor, norm: torch.nn.LayerNorm, keep_sum: bool = False) -> Tensor:
    """norm(x + y) for contiguous float32 (N, D) rows in one pass. With `keep_sum`, x is also updated in
    place to x + y (the pre-norm residual stream). Needs the kernels (`kernels()` not None)."""
    n, d = x.shape
    if y.shape != x.shape or not (x.is_contiguous() and y.is_contiguous()) or tuple(norm.normalized_shape) != (d,):
        raise ValueError(f"add_layer_norm: x {tuple(x.shape)}, y {tuple(y.shape)}, norm over "
                         f"{tuple(norm.normalized_shape)} do not fit")
    out = torch.empty_like(x)
    w, bias = norm.weight, norm.bias
    KERNELS.get().attnlab_add_layer_norm(x.data_ptr(), y.data_ptr(), None if w is None else w.data_ptr(),
                                         None if bias is None else bias.data_ptr(), norm.eps,
                                         x.data_ptr() if keep_sum else None, out.data_ptr(), n, d)
    return out
