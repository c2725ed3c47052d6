"""Decoding settings chosen on the validation set and stored with the model.

At the end of training, the run's model (RUN/model.safetensors: the best or averaged weights) decodes the first `decode_tuning_sentences` validation sentences
(training setting, default 500, at most `eval_bleu_sentences`; 0 = off) greedily and with beam search over a small grid of length
penalties (GNMT's alpha), then with a wider beam at the best penalty; the setting with the highest
validation BLEU (ties: the cheaper one, greedy first) is written into RUN/config.json as
`"decode": {"beam", "length_penalty", "valid_bleu", "sentences", "grid": [...]}`. `attnlab translate` and
`attnlab evaluate` use it when --beam / --length-penalty are not given (attnlab.translate.Translator.resolve).
Only validation data is read here: choosing on a test set would report a tuned score as a held-out one.

Place in the layering: applications; imports only from training and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from attnlab.io import atomic_write_json
from attnlab.metrics.bleu import corpus_scores
from attnlab.translate import DecodeConfig, Translator

PENALTIES = (0.6, 1.0, 1.5, 2.0)
BEAM, WIDE_BEAM = 4, 8


def tune_decoding(run_dir: str | Path, sources: Sequence[str], references: Sequence[str],
                  device: str | torch.device = "cpu", sentences: int = 500) -> dict[str, Any] | None:
    """Choose beam and length penalty on (sources, references) and store them in RUN/config.json; returns
    the stored "decode" entry, or None when there is nothing to tune on."""
    n = min(int(sentences), len(sources), len(references))
    if n <= 0:
        return None
    sources, references = list(sources[:n]), list(references[:n])
    translator = Translator.load(run_dir, device)
    grid: list[dict[str, Any]] = []

    def score(beam: int, alpha: float) -> float:
        hyps = translator.translate(sources, DecodeConfig(beam=beam, length_penalty=alpha))
        bleu = float(corpus_scores(hyps, references)["bleu"])
        grid.append({"beam": beam, "length_penalty": alpha, "valid_bleu": round(bleu, 2)})
        return bleu

    score(1, PENALTIES[0])  # greedy: the penalty plays no part
    for alpha in PENALTIES:
        score(BEAM, alpha)
    best = max(grid, key=lambda g: g["valid_bleu"])  # max keeps the first of equals: the cheaper setting
    if best["beam"] == BEAM:
        score(WIDE_BEAM, best["length_penalty"])
        best = max(grid, key=lambda g: g["valid_bleu"])
    decode = {**best, "sentences": n, "chosen_on": "validation", "grid": grid}
    config = Path(run_dir) / "config.json"
    meta = json.loads(config.read_text())
    meta["decode"] = decode
    atomic_write_json(config, meta)
    return decode
