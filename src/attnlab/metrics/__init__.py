"""Metrics: sacreBLEU and chrF on detokenised text, perplexity."""
from attnlab.metrics.bleu import corpus_scores, perplexity

__all__ = ["corpus_scores", "perplexity"]
