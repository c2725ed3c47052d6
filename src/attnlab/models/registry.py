"""Model families by name: `build_model(arch, config_dict)` for checkpoints and the CLI.

Each family registers a config dataclass (with `to_dict`/`from_dict`) and a model class that speaks
the decoding protocol (attnlab.decoding.protocol) and `forward(src, tgt) -> logits (B, T, V)`.
A model may also define `forward_with_aux(src, tgt) -> (logits, aux_loss)` for extra training terms
(e.g. Show, Attend and Tell's doubly stochastic attention regulariser); the trainer uses it when present.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from attnlab.config import TransformerConfig


@dataclass(frozen=True)
class Family:
    config_cls: type
    model_factory: Callable[[Any], nn.Module]


_FAMILIES: dict[str, Family] = {}
_loaded = False  # not `if _FAMILIES`: a family module imported first registers itself early


def register(arch: str, config_cls: type, model_factory: Callable[[Any], nn.Module]) -> None:
    _FAMILIES[arch] = Family(config_cls, model_factory)


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from attnlab.models.transformer import Transformer

    register("transformer", TransformerConfig, Transformer)
    # families that live in optional modules register themselves on import
    import importlib

    for module in ("attnlab.models.rnn", "attnlab.models.captioning"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:  # not written yet / optional dependency missing
            if err.name != module:
                raise


def architectures() -> list[str]:
    _load_builtin()
    return sorted(_FAMILIES)


def family(arch: str) -> Family:
    _load_builtin()
    if arch not in _FAMILIES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[arch]


def build_model(arch: str, config: dict[str, Any] | Any) -> nn.Module:
    fam = family(arch)
    cfg = fam.config_cls.from_dict(config) if isinstance(config, dict) else config
    return fam.model_factory(cfg)
