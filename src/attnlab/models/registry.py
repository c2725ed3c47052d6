"""Model families by name: `build_model(arch, config_dict)` for checkpoints and the CLI, and what each
family can do.

Each family registers a config dataclass (with `to_dict`/`from_dict`), a model class that speaks
the decoding protocol (attnlab.decoding.protocol) and `forward(src, tgt) -> logits (B, T, V)`, and its
capabilities (CAPABILITIES). Commands and the service ask `supports(arch, what)` / `require(arch, what)`,
never a family's name, so a request a model cannot serve (the attention of the fixed-context RNN, an
ONNX export of a captioner) gets one line that says so.
A model may also define `forward_with_aux(src, tgt) -> (logits, aux_loss)` for extra training terms
(e.g. Show, Attend and Tell's doubly stochastic attention regulariser); the trainer uses it when present.

Place in the layering: models (imports attnlab.config; the families' modules register themselves).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from attnlab.config import TransformerConfig


# what a family can do -> how a request for it is described in an error
CAPABILITIES = {
    "translation": "translate text",
    "captioning": "caption images",
    "attention_maps": "show attention maps",
    "beam": "decode with beam search",
    "kv_cache": "decode with a cache",
    "export_hf": "be exported to Hugging Face Marian",
    "export_onnx": "be exported to ONNX",
}


class UnsupportedError(ValueError):
    """A request the model's family cannot serve (a one-line message; the service answers it with a 4xx)."""


@dataclass(frozen=True)
class Family:
    config_cls: type
    model_factory: Callable[[Any], nn.Module]
    capabilities: frozenset[str] = frozenset()
    description: str = ""


_FAMILIES: dict[str, Family] = {}
_loaded = False  # not `if _FAMILIES`: a family module imported first registers itself early


def register(arch: str, config_cls: type, model_factory: Callable[[Any], nn.Module],
             capabilities: tuple[str, ...] | frozenset[str] = (), description: str = "") -> None:
    unknown = set(capabilities) - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"{arch}: unknown capabilities {sorted(unknown)}; known: {', '.join(CAPABILITIES)}")
    _FAMILIES[arch] = Family(config_cls, model_factory, frozenset(capabilities), description or arch)


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from attnlab.models.transformer import Transformer

    register("transformer", TransformerConfig, Transformer,
             ("translation", "attention_maps", "beam", "kv_cache", "export_hf", "export_onnx"),
             "the Transformer")
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


def supports(arch: str, capability: str) -> bool:
    """Whether models of this family can do `capability` (a key of CAPABILITIES)."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; known: {', '.join(CAPABILITIES)}")
    return capability in family(arch).capabilities


def require(arch: str, capability: str) -> None:
    """Raise UnsupportedError, one line, when models of this family cannot do `capability`."""
    if not supports(arch, capability):
        fam = family(arch)
        raise UnsupportedError(f"this model ({fam.description}, arch {arch!r}) cannot "
                               f"{CAPABILITIES[capability]}")
