"""attnlab: attention and the Transformer, faithful to the papers, fast, and usable.

Place in the layering: models; imports only from layers and the parts below it (tests/test_layering.py).
"""
from attnlab.config import TransformerConfig
from attnlab.models.transformer import Transformer

__version__ = "0.1.0"
__all__ = ["TransformerConfig", "Transformer", "__version__"]
