"""Reading and writing a run directory's description (config.json) and loading a trained model.

`load_run(path)` accepts a training run (RUN/), or one of its checkpoints (RUN/checkpoints/step-N).
Every failure is a one-line error naming the path and the problem.

Place in the layering: applications; imports only from training and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.models.registry import build_model
from attnlab.training.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    atomic_write_json,
    load_weights,
    read_checkpoint_state,
)


@dataclass
class LoadedRun:
    model: nn.Module
    tokenizers: Any
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def command_record(args: Any, meta: dict[str, Any] | None) -> dict[str, Any]:
    """The run's command for config.json: the one that started it stays "command" (the model card quotes
    it); each --resume adds its own to "resumed_with"."""
    now = "attnlab " + shlex.join(getattr(args, "argv", None) or sys.argv[1:])
    if meta and meta.get("command"):
        return {"command": meta["command"], "resumed_with": [*meta.get("resumed_with", []), now]}
    return {"command": now}


def write_run_config(run_dir: Path, arch: str, model_config: dict, task: dict, train: dict,
                     tokenizer: dict, extra: dict | None = None) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(run_dir) / "config.json", {
        "format": FORMAT, "version": FORMAT_VERSION, "arch": arch, "model": model_config,
        "task": task, "train": train, "tokenizer": tokenizer, **(extra or {}),
    })


def read_run_config(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"model directory {run_dir} not found")
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a directory (pass the run directory given to 'attnlab train --out')")
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not an attnlab model directory: no config.json")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is corrupt: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{run_dir} is not an attnlab model directory (config.json has no '{FORMAT}' format tag)")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{run_dir} was written by a newer attnlab (format {meta['version']})")
    for key in ("arch", "model", "tokenizer"):
        if key not in meta:
            raise CheckpointError(f"{path} is missing the '{key}' entry")
    return meta


def load_tokenizers(run_dir: Path, info: dict[str, Any]) -> Any:
    kind = info.get("kind", "subword")
    if kind == "subword":
        from attnlab.data.tokenizer import TokenizerPair

        return TokenizerPair.load(run_dir)
    if kind == "word":
        from attnlab.data.word_vocab import WordVocab

        return WordVocab.load(Path(run_dir) / info.get("file", "vocab.json"))
    raise CheckpointError(f"{run_dir}: unknown tokenizer kind {kind!r}")


def is_marian_dir(path: Path) -> bool:
    """A Hugging Face Marian directory (e.g. written by `attnlab export --format hf`)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "marian"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _load_marian_dir(path: Path, device: str | torch.device) -> LoadedRun:
    """A Marian directory: published (source.spm, target.spm, vocab.json: decoded as transformers does,
    attnlab.export.marian_import) or written by `attnlab export --format hf` (attnlab's tokenizer.json)."""
    from attnlab.data.marian_tokenizer import MarianTokenizerPair, is_marian_tokenizer_dir
    from attnlab.export.marian_import import generation_defaults, load_marian

    model = load_marian(path)
    meta = {"arch": "transformer", "model": model.cfg.to_dict(), "tokenizer": {"kind": "subword"}, "task": {},
            "format": "hf-marian"}
    if is_marian_tokenizer_dir(path):
        meta["generation"] = generation_defaults(path)
        meta["tokenizer"] = {"kind": "marian"}
        tokenizers = MarianTokenizerPair.load(path, meta["generation"]["decoder_start_id"])
        for side, size in (("source", tokenizers.src.vocab_size), ("target", tokenizers.tgt.vocab_size)):
            expected = model.cfg.src_vocab_size if side == "source" else model.cfg.tgt_vocab_size
            if size > expected:
                raise CheckpointError(f"{path}: the {side} vocabulary has {size} entries but the model {expected}")
    else:
        try:
            tokenizers = load_tokenizers(path, {"kind": "subword"})
        except FileNotFoundError:
            raise CheckpointError(f"{path} is a Hugging Face Marian model without tokenizer files (source.spm, "
                                  "target.spm and vocab.json, or attnlab's tokenizer.json)") from None
    model.to(device).eval()
    return LoadedRun(model, tokenizers, meta, path)


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Build the model described by RUN/config.json and load its weights and tokenizer."""
    from attnlab.hub import resolve_model

    path = resolve_model(path)
    if is_marian_dir(path):
        return _load_marian_dir(path, device)
    weights = path / "model.safetensors"
    run_dir = path
    if (path / "state.json").is_file() and not (path / "config.json").is_file():  # a checkpoint dir
        read_checkpoint_state(path)  # its files match their sha256
        run_dir = path.parent.parent
    meta = read_run_config(run_dir)
    if not weights.is_file():
        raise CheckpointError(f"{path} has no model.safetensors (training never saved a checkpoint?)")
    try:
        model = build_model(meta["arch"], meta["model"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{run_dir}/config.json describes no valid model: {err}") from None
    load_weights(model, weights)
    tokenizers = load_tokenizers(run_dir, meta["tokenizer"])
    vocab = getattr(getattr(tokenizers, "tgt", tokenizers), "vocab_size", None)
    expected = meta["model"].get("tgt_vocab_size") or meta["model"].get("vocab_size")
    if vocab is not None and expected is not None and vocab != expected:
        raise CheckpointError(f"{run_dir}: tokenizer has {vocab} target tokens but the model expects {expected}")
    model.to(device).eval()
    return LoadedRun(model, tokenizers, meta, run_dir)
