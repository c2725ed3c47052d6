"""Dynamic int8 quantisation for CPU inference (PyTorch's `quantize_dynamic`, fbgemm/x86 kernels).

Weights of the linear layers are stored as int8 (per-tensor scale); activations are quantised on the
fly, one scale per batch, and results come back in float32. What is quantised: the feed-forward
networks, attention output projections and the output projection to the vocabulary (the largest
matrix of a small translator), plus every plain linear layer of the RNN and captioning models. What is
not: `MultiHeadAttention.in_proj`, whose rows are read as separate W^Q and W^K W^V matrices in
encoder-decoder attention, and every embedding. BLEU before and after:
benchmarks/multi30k_quality.py (`--int8`); speed: benchmarks/bench_decode.py.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn


def quantizable_linears(model: nn.Module) -> list[str]:
    """Names of the nn.Linear modules `quantize_int8` converts."""
    return [name for name, m in model.named_modules() if type(m) is nn.Linear and not name.endswith("in_proj")]


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` with int8 dynamically quantised linear layers, for CPU inference only."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 quantisation runs on the CPU: load the model with --device cpu")
    names = quantizable_linears(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear layer to quantise")
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices (torchao is its successor)
        warnings.simplefilter("ignore")
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

        quantized = quantize_dynamic(model.eval(), {name: default_dynamic_qconfig for name in names},
                                     dtype=torch.qint8, inplace=False)
    return quantized
