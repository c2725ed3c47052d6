"""Validation during training (loss, perplexity, BLEU on the first sentences) and the run's log.jsonl.

Place in the layering: training; imports only from data and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from attnlab.data.batching import TokenBatchSampler
from attnlab.metrics.bleu import perplexity
from attnlab.training.amp import autocast
from attnlab.training.config import TrainConfig
from attnlab.training.loss import label_smoothed_nll

Example = tuple[Any, list[int]]  # (source ids or image, target ids BOS ... EOS)


@dataclass
class ValidationSet:
    examples: list[Example]  # encoded, for loss / perplexity
    sources: list[Any]  # raw source sentences (or images) for BLEU
    references: list[Any]  # raw reference sentences (or lists of them)


def source_length(src: Any) -> int:
    """Tokens of a source (an image counts as one)."""
    return len(src) if isinstance(src, (list, tuple)) else 1


def validation_scores(model: nn.Module, valid: ValidationSet, cfg: TrainConfig, device: torch.device, pad_id: int,
                      amp: str, collate_fn: Callable, translate_fn: Callable | None,
                      score_fn: Callable) -> dict[str, Any]:
    """valid_loss (label-smoothed, per real target token), valid_ppl, and with a translate_fn the scores of
    its outputs for the first `cfg.eval_bleu_sentences` sources (and one sample). `model` in eval mode."""
    nll_sum, tokens = 0.0, 0
    loss_sum = 0.0
    sampler = TokenBatchSampler([source_length(e[0]) for e in valid.examples],
                                [len(e[1]) for e in valid.examples], cfg.max_tokens, shuffle=False)
    for idx in sampler:
        batch = collate_fn([valid.examples[i] for i in idx], pad_id).to(device)
        with autocast(amp, device):
            logits = model(batch.src, batch.tgt_in)
        loss, nll = label_smoothed_nll(logits, batch.tgt_out, pad_id, cfg.label_smoothing)
        loss_sum += float(loss)
        nll_sum += float(nll)
        tokens += int(batch.n_tokens)
    result: dict[str, Any] = {"valid_loss": loss_sum / max(tokens, 1), "valid_ppl": perplexity(nll_sum, tokens)}
    n = cfg.eval_bleu_sentences
    if n and translate_fn is not None and valid.sources:
        hyps = translate_fn(model, valid.sources[:n], cfg.eval_beam)
        result.update({k: v for k, v in score_fn(hyps, valid.references[:n]).items() if k != "bleu_signature"})
        result["valid_sample"] = hyps[0]
    return result


def score_of(result: dict[str, Any]) -> float:
    """Higher is better: BLEU when it was measured, else minus the validation loss."""
    return float(result["bleu"]) if "bleu" in result else -float(result["valid_loss"])


def repair_log(path: Path) -> None:
    """A kill -9 in the middle of a log write leaves half a line; cut it so log.jsonl stays JSON lines."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def append_log(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
