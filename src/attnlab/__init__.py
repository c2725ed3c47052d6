"""attnlab: attention and the Transformer, faithful to the papers, fast, and usable."""
from attnlab.config import TransformerConfig

__version__ = "0.1.0"
__all__ = ["TransformerConfig", "__version__"]
