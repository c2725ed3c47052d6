"""Dynamic int8 quantisation for CPU inference (attnlab.layers.int8: PyTorch's fbgemm/x86 kernels).

Weights of the linear layers are stored as int8 (one scale per output row); activations are quantised
on the fly, one scale per call, and results come back in float32. What is quantised: every nn.Linear,
the attention's stacked input projections included (encoder-decoder attention uses blocks of their
rows, which per-row scales keep exact), the feed-forward networks and the output projection to the
vocabulary (the largest matrix of a small translator; the embedding it may share stays float32), and
the plain linear layers of the RNN and captioning models. What is not: embeddings, recurrent cells,
convolutions, layer norms. BLEU before and after: benchmarks/multi30k_quality.py (`--int8`); speed:
`attnlab bench decode`.

Place in the layering: models; imports only from layers and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import copy

from torch import nn

from attnlab.layers.int8 import Int8Linear


def quantizable_linears(model: nn.Module) -> list[str]:
    """Names of the nn.Linear modules `quantize_int8` converts."""
    return [name for name, m in model.named_modules() if type(m) is nn.Linear]


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) with int8 linear layers, for CPU inference only; `model` is left alone."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 quantisation runs on the CPU: load the model with --device cpu")
    names = quantizable_linears(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear layer to quantise")
    quantized = copy.deepcopy(model).eval()
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = quantized.get_submodule(parent_name) if parent_name else quantized
        setattr(parent, child, Int8Linear(getattr(parent, child)))
    return quantized.requires_grad_(False)
