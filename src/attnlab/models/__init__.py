"""Model families, one readable file each, built from attnlab.layers."""
from attnlab.models.transformer import Transformer, TransformerState

__all__ = ["Transformer", "TransformerState"]
