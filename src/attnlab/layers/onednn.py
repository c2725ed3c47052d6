"""Linear layers of CPU decoding through oneDNN with prepacked weights.

Decoding multiplies the same weights by a small batch of new tokens at every step. On the CPU,
PyTorch's F.linear goes to MKL's sgemm, which re-reads the weight in its plain layout every call and, on
AMD CPUs, does not take its best path; oneDNN (bundled with PyTorch CPU builds, the kernels
torch.compile's CPU freezing uses) multiplies by a weight reordered once into its blocked layout.
Measured on a 2-core AMD EPYC (AVX2), fp32, 100 rows: the 256x8000 output projection 6.3 -> 4.2 ms,
the 256x768 attention projection 0.45 -> 0.35 ms (benchmarks: `attnlab bench decode`).

Only inside `fast_decoding()` (the Transformer's cached decoder step enters it; the encoder and the
recomputing path do not), on the CPU, in float32, with no gradient wanted, no autocast and no
tracing/export; everywhere else, and on any error, plain F.linear. oneDNN builds and keeps a kernel
per input shape (~0.6-0.7 MB each, measured), so only the first `MAX_ROW_COUNTS` distinct row counts
a process sees take this path; later new ones fall back to F.linear, which bounds the memory (a
decode step's rows are the live sentences or hypotheses: a handful of distinct counts per batch size).
Packed weights are cached per module and per row block. They are checked against the weight once per
decode (each `init_decode` opens a new epoch): same storage, same version counter and the same sum
(an optimizer step moves every weight, and so their sum). The version counter alone is not enough:
PyTorch's fused Adam (`Adam(fused=True)`, what the trainer uses) writes the parameters without
bumping it, and a validation decode between training steps would otherwise multiply by the weights
of the previous validation. The result is the same function in float32 (differences at rounding
level, ~1e-6 relative).

Place in the layering: layers; imports only from io and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import os
import weakref
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.layers.int8 import Int8Linear

_ACTIVE: contextvars.ContextVar[int] = contextvars.ContextVar("attnlab_fast_decoding", default=0)
_epochs = itertools.count(1)
_PACKED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_state = {"available": os.environ.get("ATTNLAB_ONEDNN", "1") != "0" and torch.backends.mkldnn.is_available()}
MAX_ROW_COUNTS = 16
_row_counts: set[int] = set()


def new_epoch() -> int:
    """A fresh decode: packed weights are re-checked against their weights at their first use in it."""
    return next(_epochs)


@contextlib.contextmanager
def fast_decoding(epoch: int | None = None) -> Iterator[None]:
    """Let the linear layers of the Transformer use oneDNN with prepacked weights (CPU inference),
    within decode `epoch` (`new_epoch()`; a fresh one when not given)."""
    token = _ACTIVE.set(epoch or new_epoch())
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _known_rows(x: Tensor) -> bool:
    rows = x.numel() // x.size(-1) if x.numel() else 0
    if rows in _row_counts:
        return True
    if len(_row_counts) >= MAX_ROW_COUNTS:
        return False
    _row_counts.add(rows)
    return True


def _prepackable(weight: Tensor) -> bool:
    return (
        _ACTIVE.get()
        and _state["available"]
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and weight.requires_grad)
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    )


def _usable(x: Tensor, weight: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not (torch.is_grad_enabled() and x.requires_grad)
        and _prepackable(weight)
        and _known_rows(x)
    )


def _packed(module: nn.Module, weight: Tensor, rows: slice) -> Tensor:
    cache = _PACKED.setdefault(module, {})
    epoch = _ACTIVE.get()
    key = (weight.data_ptr(), weight._version, tuple(weight.shape), rows.start, rows.stop)
    hit = cache.get(rows.start)
    if hit is not None and hit[0] == key and hit[1] == epoch:
        return hit[3]
    block = weight[rows].detach()
    checksum = float(block.sum())  # ~0.7 ms for the small model's decoder per decode
    if hit is not None and hit[0] == key and hit[2] == checksum:  # checked once in this epoch: unchanged
        cache[rows.start] = (key, epoch, checksum, hit[3])
        return hit[3]
    packed = torch.ops.mkldnn._reorder_linear_weight(block.contiguous())
    cache[rows.start] = (key, epoch, checksum, packed)
    return packed


def linear(module: nn.Module, x: Tensor, rows: slice | None = None, relu: bool = False) -> Tensor:
    """module(x) for an nn.Linear (rows `rows` of its weight only, when given), optionally followed by
    ReLU; through oneDNN when `_usable`, else F.linear. An int8 layer (attnlab.layers.int8) runs its own
    kernels; other module types are called as they are."""
    if not isinstance(module, nn.Linear):
        if isinstance(module, Int8Linear):
            return module(x, rows=rows, relu=relu)
        if rows is not None:
            raise TypeError(f"cannot take rows of a {type(module).__name__}")
        y = module(x)
        return F.relu(y) if relu else y
    weight, bias = module.weight, module.bias
    if rows is not None:
        bias = bias[rows] if bias is not None else None
    if _usable(x, weight):
        try:
            packed = _packed(module, weight, rows or slice(0, weight.size(0)))
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "relu" if relu else "none", [], "")
        except (RuntimeError, AttributeError):  # a build without these kernels: fall back for good
            _state["available"] = False
    y = F.linear(x, weight[rows] if rows is not None else weight, bias)
    return F.relu(y) if relu else y


def prepacked(module: nn.Module, rows: slice | None = None, relu: bool = False) -> Callable[[Tensor], Tensor]:
    """x -> linear(module, x, rows, relu) with the packed weight looked up once, now (call it inside
    `fast_decoding`, once per decode): the lean decoder step (attnlab.models.transformer_step) calls it at every
    step of that decode. A row count beyond `MAX_ROW_COUNTS`, or anything `linear` would not prepack,
    takes `linear`."""
    if not (isinstance(module, nn.Linear) and _prepackable(module.weight)):
        return functools.partial(linear, module, rows=rows, relu=relu)
    weight = module.weight
    try:
        packed = _packed(module, weight, rows or slice(0, weight.size(0)))
    except (RuntimeError, AttributeError):
        _state["available"] = False
        return functools.partial(linear, module, rows=rows, relu=relu)
    bias = module.bias if module.bias is None or rows is None else module.bias[rows]
    post = "relu" if relu else "none"

    def apply(x: Tensor) -> Tensor:
        if _known_rows(x):
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, post, [], "")
        return linear(module, x, rows, relu)

    return apply
