"""Metrics: sacreBLEU and chrF on detokenised text, perplexity.

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from attnlab.metrics.bleu import corpus_scores, perplexity

__all__ = ["corpus_scores", "perplexity"]
