"""What answers cost: the work budget of a request, the size of its answer before any work is done,
and cross-attention selected and encoded compactly.

Work of a sentence = source tokens x beam x the longest output it may get (a * S + b, the decoding
protocol's length limit): the number of (beam hypothesis, target step, source position) triples the
decoder may touch. A request's work is the sum over its sentences.

Place in the layering: serve and bench; imports only from applications and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import base64
from typing import Any

import torch

from attnlab.translate import DecodeConfig

# bytes per weight in the answer: "0.1234, " in JSON; float16 in base64 (2 bytes -> 8/3 characters)
BYTES_PER_WEIGHT = {"json": 8.0, "f16": 8 / 3}
BYTES_PER_TOKEN = 16  # a subword in a JSON list, escaped, with its quotes and comma (generous)
CAPTION_MAX_WORDS = 30


DEFAULT_DECODE = DecodeConfig()


def max_target_len(src_len: int, cfg: DecodeConfig = DEFAULT_DECODE) -> int:
    return int(cfg.max_len_a * src_len + cfg.max_len_b)


def sentence_work(src: list[int], beam: int) -> int:
    return len(src) * beam * max_target_len(len(src))


def selection(sel: Any, n_layers: int, n_heads: int) -> tuple[list[int], list[int] | None]:
    """An AttentionRequest (or defaults) -> (layer indices, head indices or None for the mean)."""
    layers = getattr(sel, "layers", "all")
    heads = getattr(sel, "heads", "all")
    layer_index = list(range(n_layers)) if layers == "all" else [n_layers - 1] if layers == "last" else list(layers)
    head_index = None if heads == "mean" else list(range(n_heads)) if heads == "all" else list(heads)
    return layer_index, head_index


def attention_bytes(src_len: int, tgt_len: int, n_layers: int, n_heads: int, fmt: str) -> int:
    """Upper bound of one sentence's attention in the answer (tgt_len counts the final </s>)."""
    weights = n_layers * n_heads * tgt_len * src_len
    return int(weights * BYTES_PER_WEIGHT[fmt]) + (src_len + tgt_len) * BYTES_PER_TOKEN + 300


def encode_weights(cross: torch.Tensor, layer_index: list[int], head_index: list[int] | None,
                   fmt: str) -> dict[str, Any]:
    """cross (L, H, T, S) -> the selected weights, as nested lists (4 decimals) or base64 float16."""
    w = cross[layer_index]
    w = w.mean(1, keepdim=True) if head_index is None else w[:, head_index]  # (l, h, T, S)
    out: dict[str, Any] = {"layer_index": layer_index, "head_index": head_index, "shape": list(w.shape),
                           "weights": None, "weights_f16": None}
    if fmt == "f16":
        out["weights_f16"] = base64.b64encode(w.to(torch.float16).contiguous().numpy().astype("<f2").tobytes()).decode()
    else:
        out["weights"] = w.double().round(decimals=4).tolist()
    return out


def too_large(size: int, cap: int, what: str) -> str:
    return (f"the answer would be {size / 1e6:.2f} MB{what}, over the limit of {cap / 1e6:g} MB: ask for less")


TRANSLATE_HINT = ('; select attention with {"layers": "last", "heads": "mean", "format": "f16", "sentences": [0]}, '
                  "or send fewer or shorter sentences")
CAPTION_HINT = "; send attention=false for the caption alone"
