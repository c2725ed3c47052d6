"""BLEU-1..4 for captions against several references per image (sacreBLEU, lower-cased, 13a tokens).

BLEU-n is the geometric mean of the 1..n-gram precisions times the brevity penalty (Papineni et al.
2002), as reported in the captioning papers (Xu et al. 2015, Table 1); scores are on a 0-100 scale.

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

from typing import Sequence

from sacrebleu.metrics import BLEU


def corpus_bleu_multi(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """hypotheses[i] is scored against all of references[i] (any number each, at least one)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} captions but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("no captions to score")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every caption needs at least one reference")
    n_refs = max(len(refs) for refs in references)
    # sacreBLEU takes one stream per reference position; None marks a missing reference
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(n_refs)]
    scores = {}
    for n in range(1, 5):
        metric = BLEU(max_ngram_order=n, lowercase=True, effective_order=False)
        scores[f"bleu{n}"] = float(metric.corpus_score(list(hypotheses), streams).score)
    return scores
