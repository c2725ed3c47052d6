"""Model families, one readable file each, built from attnlab.layers.

Place in the layering: models; imports only from layers and the parts below it (tests/test_layering.py).
"""
from attnlab.models.transformer import Transformer, TransformerState

__all__ = ["Transformer", "TransformerState"]
