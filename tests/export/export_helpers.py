"""Small random attnlab Transformers for the export tests (imported by name: tests have no packages)."""
from __future__ import annotations

import torch

from attnlab import Transformer, TransformerConfig

PAD, BOS, EOS = 0, 1, 2

# (id, overrides): the settings an exporter has to map differently
CONFIGS = [
    ("shared-tied", dict(share_embeddings=True, tie_output=True)),
    ("separate-vocab", dict(tgt_vocab_size=29, tie_output=True)),
    ("gelu-untied", dict(activation="gelu", tie_output=False, n_decoder_layers=3)),
    ("shared-untied-noscale", dict(share_embeddings=True, tie_output=False, scale_embedding=False)),
]


def make_model(seed: int = 0, **overrides) -> Transformer:
    """A random model whose LayerNorms and biases are not at their init values (1 and 0), so a
    wrong mapping of any of them shows in the logits."""
    torch.manual_seed(seed)
    values = dict(src_vocab_size=31, tgt_vocab_size=31, d_model=32, n_heads=4, n_layers=2, d_ff=48,
                  dropout=0.0, pad_id=PAD)
    values.update(overrides)
    model = Transformer(TransformerConfig(**values))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def make_batch(model: Transformer, seed: int = 1, b: int = 3, s: int = 7, t: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """src with padded rows (one unpadded, two cut short), tgt starting with BOS, no padding."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, model.cfg.src_vocab_size, (b, s), generator=g)
    src[1, 5:] = PAD
    src[2, 3:] = PAD
    tgt = torch.randint(3, model.cfg.tgt_vocab_size, (b, t), generator=g)
    tgt[:, 0] = BOS
    return src, tgt


def eos_that_ends_a_row(model: Transformer, src: torch.Tensor, steps: int = 8) -> int:
    """A token id that attnlab's greedy emits mid-way through row 0, to use as EOS so that decoding
    really finishes rows early (random weights rarely emit a fixed EOS)."""
    from attnlab.decoding import greedy

    out = greedy(model, src, steps, BOS, eos_id=-1)
    for token in out[0, 2:].tolist():
        if token not in (PAD, BOS):
            return token
    raise AssertionError("greedy output has no usable token for EOS; change the seed")
