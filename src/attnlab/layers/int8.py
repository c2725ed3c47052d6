"""Int8 linear layers for CPU inference: weights stored as int8 with one scale per output row, activations
quantised on the fly (one scale per call), products in int32 and results back in float32: PyTorch's
dynamic quantisation kernels (fbgemm / x86), prepacked once.

Unlike torch.ao's `quantize_dynamic` modules, an `Int8Linear` also serves blocks of its rows: the
attention's stacked `in_proj` (W^Q; W^K; W^V) is used whole by self-attention and as W^Q and [W^K; W^V]
by encoder-decoder attention. Quantising per output row makes a block of rows exactly the rows of the
whole, so every use multiplies by the same int8 weights; each block is packed once, on first use.

Place in the layering: layers; imports only from io and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn


class Int8Linear(nn.Module):
    """An nn.Linear with int8 weights (symmetric, one scale per output row); forward(x, rows, relu)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.weight.device.type != "cpu":
            raise ValueError("int8 linear layers run on the CPU")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
        with warnings.catch_warnings():  # quantized tensors carry a deprecation notice (torchao is their successor)
            warnings.simplefilter("ignore")
            self.qweight = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0,
                                                      torch.qint8)
        self.bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self._packs: dict[tuple[int, int], object] = {}

    def _bounds(self, rows: slice | None) -> tuple[int, int]:
        start, stop, _ = (rows or slice(None)).indices(self.out_features)
        return start, stop

    def _packed(self, rows: slice | None):
        start, stop = self._bounds(rows)
        pack = self._packs.get((start, stop))
        if pack is None:
            bias = None if self.bias is None else self.bias[start:stop].contiguous()
            pack = torch.ops.quantized.linear_prepack(self.qweight[start:stop], bias)
            self._packs[(start, stop)] = pack
        return pack

    def dequantized_weight(self) -> Tensor:
        """The float32 weight the int8 one stands for (out_features, in_features)."""
        return self.qweight.dequantize()

    def forward(self, x: Tensor, rows: slice | None = None, relu: bool = False) -> Tensor:
        if x.size(-1) != self.in_features:
            raise ValueError(f"Int8Linear expects (..., {self.in_features}) inputs, got {tuple(x.shape)}")
        if x.dtype != torch.float32:
            x = x.float()
        if x.numel() == 0:  # the kernels want at least one row
            start, stop = self._bounds(rows)
            return x.new_zeros(*x.shape[:-1], stop - start)
        op = torch.ops.quantized.linear_relu_dynamic if relu else torch.ops.quantized.linear_dynamic
        return op(x, self._packed(rows), True)  # reduce_range: 7-bit activations, no int16 overflow on AVX2

    def __getstate__(self) -> dict:  # copies and pickles repack on first use
        return {**self.__dict__, "_packs": {}}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

