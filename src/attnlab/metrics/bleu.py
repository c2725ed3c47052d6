"""sacreBLEU and chrF on detokenised output (default settings: 13a tokenisation, case-sensitive).

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import math
from typing import Sequence

from sacrebleu.metrics import BLEU, CHRF


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float | str]:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu_metric, chrf_metric = BLEU(), CHRF()
    bleu = bleu_metric.corpus_score(list(hypotheses), [list(references)])
    chrf = chrf_metric.corpus_score(list(hypotheses), [list(references)])
    return {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2),
            "bleu_signature": f"{bleu_metric.get_signature()} = {str(bleu).split('= ', 1)[-1]}"}


def perplexity(nll_sum: float, n_tokens: int) -> float:
    return math.exp(min(nll_sum / max(n_tokens, 1), 100.0))
