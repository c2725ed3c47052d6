"""Small attnlab Transformers for the export tests (imported by name: the tests have no packages).

The models are trained for 100 steps to reverse their source. Random weights are a poor test of
a decoder: their greedy output repeats one token forever, whatever the prefix, so a broken cache
or position would go unnoticed, and they never emit EOS. A little training gives outputs that
depend on the prefix and end with EOS at different steps in different rows.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from attnlab import Transformer, TransformerConfig

PAD, BOS, EOS = 0, 1, 2

# (id, overrides): the settings an exporter has to map differently
CONFIGS = [
    ("shared-tied", dict(share_embeddings=True, tie_output=True)),
    ("separate-vocab", dict(tgt_vocab_size=29, tie_output=True)),
    # also the ONNX tests' model: unequal depths (1 encoder, 2 decoder layers) and vocabularies; Marian's
    # zero start embedding (TransformerConfig.zero_start_id: how attnlab trains now) with an untied projection
    ("gelu-untied", dict(activation="gelu", tie_output=False, tgt_vocab_size=29, n_layers=1, n_decoder_layers=2,
                         zero_start_id=BOS)),
    ("shared-untied-noscale", dict(share_embeddings=True, tie_output=False, scale_embedding=False)),
]
# what Marian cannot express, ONNX can: pre-norm (with final LayerNorms), learned positions, no biases
ONNX_ONLY_CONFIGS = [
    ("prenorm-learned", dict(norm_first=True, positional="learned", max_len=64, bias=False, n_layers=1)),
]


def make_config(**overrides) -> TransformerConfig:
    values = dict(src_vocab_size=31, tgt_vocab_size=31, d_model=32, n_heads=4, n_layers=2, d_ff=48,
                  dropout=0.0, pad_id=PAD)
    values.update(overrides)
    return TransformerConfig(**values)


def make_model(seed: int = 0, steps: int = 0, **overrides) -> Transformer:
    """A model with the given config; with `steps`, trained that many Adam steps to reverse its source."""
    torch.manual_seed(seed)
    model = Transformer(make_config(**overrides))
    if steps:
        cfg = model.cfg
        vocab = min(cfg.src_vocab_size, cfg.tgt_vocab_size)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(steps):
            length = int(torch.randint(2, 7, ()))
            x = torch.randint(3, vocab, (32, length))
            src = torch.cat([x, torch.full((32, 1), EOS)], dim=1)
            tgt = torch.cat([torch.full((32, 1), BOS), x.flip(1), torch.full((32, 1), EOS)], dim=1)
            logits = model(src, tgt[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@functools.lru_cache(maxsize=None)
def trained_model(name: str) -> Transformer:
    """The trained model of configuration `name` (from CONFIGS or ONNX_ONLY_CONFIGS), built once a session."""
    configs = dict(CONFIGS + ONNX_ONLY_CONFIGS)
    return make_model(seed=list(configs).index(name), steps=100, **configs[name])


def make_batch(model: Transformer, seed: int = 1, b: int = 3, s: int = 7,
               t: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """src ending with EOS, one row unpadded and two padded; tgt starting with BOS, unpadded."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, min(model.cfg.src_vocab_size, model.cfg.tgt_vocab_size), (b, s), generator=g)
    lengths = [s, 5, 3][:b] + [s] * max(0, b - 3)
    for i, n in enumerate(lengths):
        src[i, n - 1] = EOS
        src[i, n:] = PAD
    tgt = torch.randint(3, model.cfg.tgt_vocab_size, (b, t), generator=g)
    tgt[:, 0] = BOS
    return src, tgt
