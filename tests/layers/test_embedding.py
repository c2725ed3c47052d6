"""Embeddings and positional encodings (paper, sections 3.4 and 3.5)."""
import math

import pytest
import torch

from attnlab.layers.embedding import (
    LearnedPositionalEncoding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    sinusoidal_table,
)


def test_sinusoidal_table_equals_the_paper_formula():
    d = 16
    table = sinusoidal_table(50, d)
    for pos in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_sinusoidal_encoding_adds_the_table_and_extends_past_max_len():
    pe = SinusoidalPositionalEncoding(8, max_len=4)
    x = torch.zeros(1, 10, 8)
    out = pe(x)  # longer than max_len: extends instead of failing
    torch.testing.assert_close(out[0], sinusoidal_table(10, 8))
    torch.testing.assert_close(pe(torch.zeros(1, 2, 8), start=5)[0], sinusoidal_table(10, 8)[5:7])


def test_learned_positions_refuse_overlong_input():
    pe = LearnedPositionalEncoding(8, max_len=4)
    with pytest.raises(ValueError, match="exceeds max_len 4"):
        pe(torch.zeros(1, 5, 8))


def test_token_embedding_is_scaled_by_sqrt_d_model():
    emb = TokenEmbedding(10, 16, pad_id=0)
    tokens = torch.tensor([[3, 4, 0]])
    torch.testing.assert_close(emb(tokens), emb.weight[tokens] * 4.0)
    assert float(emb(tokens)[0, 2].abs().sum()) == 0.0  # padding row starts at zero


def test_sinusoidal_table_at_known_positions_by_hand():
    """d_model = 4: PE(pos) = (sin(pos), cos(pos), sin(pos / 100), cos(pos / 100)) (10000^(2/4) = 100).
    pos 0: (0, 1, 0, 1); pos 1: (0.841471, 0.540302, 0.010000, 0.999950);
    pos 2: (0.909297, -0.416147, 0.019999, 0.999800); pos 50: (-0.262375, 0.964966, 0.479426, 0.877583)."""
    table = sinusoidal_table(51, 4)
    expected = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.841471, 0.540302, 0.010000, 0.999950],
                             [0.909297, -0.416147, 0.019999, 0.999800], [-0.262375, 0.964966, 0.479426, 0.877583]])
    torch.testing.assert_close(table[[0, 1, 2, 50]], expected, atol=1e-6, rtol=0)
    # an offset table continues the positions, and the module adds the rows of its positions to x
    torch.testing.assert_close(sinusoidal_table(2, 4, offset=1), expected[1:3], atol=1e-6, rtol=0)
    x = torch.ones(1, 2, 4)
    torch.testing.assert_close(SinusoidalPositionalEncoding(4)(x, start=1)[0], 1 + expected[1:3], atol=1e-6, rtol=0)
