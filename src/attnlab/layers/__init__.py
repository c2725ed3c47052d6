"""Building blocks, one concept a file, named as in the papers.

Place in the layering: layers; imports only from io and the parts below it (tests/test_layering.py).
"""
from attnlab.layers.attention import MultiHeadAttention, scaled_dot_product_attention
from attnlab.layers.embedding import (
    LearnedPositionalEncoding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    sinusoidal_table,
)
from attnlab.layers.feed_forward import PositionwiseFeedForward
from attnlab.layers.kv_cache import KVCache
from attnlab.layers.masks import causal_mask, padding_mask

__all__ = [
    "MultiHeadAttention",
    "scaled_dot_product_attention",
    "TokenEmbedding",
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEncoding",
    "sinusoidal_table",
    "PositionwiseFeedForward",
    "KVCache",
    "causal_mask",
    "padding_mask",
]
