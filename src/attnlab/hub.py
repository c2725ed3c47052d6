"""`--model` names on the Hugging Face Hub: "Helsinki-NLP/opus-mt-de-en" is fetched with huggingface_hub into
its usual cache (HF_HUB_CACHE, ~/.cache/huggingface/hub), or read from it alone with HF_HUB_OFFLINE=1.

A local path always wins: a name is looked up on the Hub only when no such file or directory exists.
Offline without the model in the cache, or a name the Hub does not have, is one line naming it.

Place in the layering: io, the lowest part; imports nothing from attnlab (tests/test_layering.py).
"""
from __future__ import annotations

import re
from pathlib import Path

# owner/name as the Hub spells repositories (no leading dot or slash, one slash)
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# what a Marian model needs; README, .gitattributes, TF / Flax / Rust weights are not downloaded
HUB_FILES = ["config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
             "model-*.safetensors", "pytorch_model.bin", "source.spm", "target.spm", "vocab.json",
             "target_vocab.json", "tokenizer_config.json", "special_tokens_map.json"]


class HubError(FileNotFoundError):
    """The name could not be fetched (offline and not cached, or not on the Hub)."""


def resolve_model(model: str | Path) -> Path:
    """A local path as it is; a Hub name "owner/name" that is not a local path: its snapshot directory."""
    path = Path(model)
    if path.exists() or not HUB_NAME.match(str(model)):
        return path
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - depends on the environment
        raise HubError(f"model directory {model} not found (a Hub name needs: pip install huggingface_hub)") from None
    name = str(model)
    try:
        snapshot = snapshot_download(repo_id=name, allow_patterns=HUB_FILES)
    except RepositoryNotFoundError:
        raise HubError(f"{name}: neither a local directory nor a model on the Hugging Face Hub") from None
    except LocalEntryNotFoundError:
        raise HubError(f"{name} is not in the Hugging Face cache and the Hub cannot be reached (offline, or "
                       "HF_HUB_OFFLINE=1): download it once with a connection, or pass a local directory") from None
    except Exception as err:  # noqa: BLE001 - network and HTTP errors: one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(f"{name}: could not be fetched from the Hugging Face Hub: {first}") from None
    return Path(snapshot)
