"""Embeddings and positional encodings (paper, sections 3.4 and 3.5)."""
import math

import pytest
import torch

from attnlab.layers.embedding import (
    LearnedPositionalEncoding,
    PatchEmbedding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    positional_encoding,
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


def test_initial_weights_are_normal_with_std_d_model_to_the_minus_half():
    """N(0, d_model^-0.5) for token and learned position embeddings: d_model = 64 gives std 0.125."""
    torch.manual_seed(0)
    for weight in (TokenEmbedding(4000, 64).weight, LearnedPositionalEncoding(64, max_len=4000).embedding.weight):
        assert abs(weight.mean().item()) < 0.002
        assert weight.std().item() == pytest.approx(0.125, rel=0.01)
    unscaled = TokenEmbedding(10, 16, scale=False)
    torch.testing.assert_close(unscaled(torch.tensor([[3]])), unscaled.weight[[3]][None])


def test_learned_positions_add_the_rows_of_their_positions():
    pe = LearnedPositionalEncoding(4, max_len=6)
    x = torch.ones(2, 3, 4)
    torch.testing.assert_close(pe(x), 1 + pe.embedding.weight[:3].expand(2, 3, 4))
    torch.testing.assert_close(pe(x, start=3), 1 + pe.embedding.weight[3:6].expand(2, 3, 4))
    with pytest.raises(ValueError, match="length 7 exceeds"):
        pe(torch.ones(1, 4, 4), start=3)


def test_sinusoidal_table_is_a_buffer_outside_the_state_dict_and_extends_past_d_model_rows():
    pe = SinusoidalPositionalEncoding(16, max_len=4)
    assert "table" not in pe.state_dict()  # recomputed, never saved (checkpoints stay loadable at any max_len)
    # 6 positions: more than the 4 rows of the table, fewer than d_model = 16 (a wrong axis would not extend)
    torch.testing.assert_close(pe(torch.zeros(1, 6, 16))[0], sinusoidal_table(6, 16))


def test_positional_encoding_by_name():
    x = torch.zeros(1, 3, 8)
    assert isinstance(positional_encoding("sinusoidal", 8, 16), SinusoidalPositionalEncoding)
    assert isinstance(positional_encoding("learned", 8, 16), LearnedPositionalEncoding)
    assert positional_encoding("none", 8, 16)(x) is x
    with pytest.raises(ValueError, match="unknown positional encoding"):
        positional_encoding("rotary", 8, 16)


def test_patch_embedding_cuts_row_major_patches_and_projects_each():
    """A 4x4 image in 2x2 patches: 4 patches, each projected by the convolution's weights (a linear map)."""
    torch.manual_seed(0)
    embed = PatchEmbedding(4, 2, d_model=5)
    assert embed.grid_shape == (2, 2)
    images = torch.randn(2, 3, 4, 4)
    out = embed(images)
    assert out.shape == (2, 4, 5)
    w, b = embed.proj.weight.reshape(5, -1), embed.proj.bias
    for index, (row, col) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        patch = images[:, :, 2 * row:2 * row + 2, 2 * col:2 * col + 2].reshape(2, -1)
        torch.testing.assert_close(out[:, index], patch @ w.t() + b)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        PatchEmbedding(5, 2, d_model=5)
