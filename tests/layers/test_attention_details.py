"""Details of the attention layers that the formula tests do not reach: keys of another dtype than the queries
(a cache kept outside autocast), the cache's default position, Luong's "general" score without a bias, the int8
layer's empty input, and a cache reordered under autograd."""
import torch

from attnlab.layers.attention import GeneralAttention, MultiHeadAttention, scaled_dot_product_attention
from attnlab.layers.int8 import Int8Linear
from attnlab.layers.kv_cache import KVCache


def test_keys_of_another_dtype_take_the_queries_dtype():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64)
    k, v = torch.randn(2, 2, 5, 4, generator=g), torch.randn(2, 2, 5, 4, generator=g)
    out, _ = scaled_dot_product_attention(q, k, v)
    expected, _ = scaled_dot_product_attention(q, k.double(), v.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected)


def test_a_cache_starts_at_position_0_by_default():
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 2).eval()
    x = torch.randn(1, 3, 8)
    default_cache, explicit_cache = KVCache(1, 2, 4, 4), KVCache(1, 2, 4, 4)
    with torch.no_grad():
        default, _ = attn(x, cache=default_cache)
        explicit, _ = attn(x, cache=explicit_cache, cache_pos=0)
        plain, _ = attn(x)
    torch.testing.assert_close(default, explicit)
    torch.testing.assert_close(default, plain)
    assert default_cache.length == 3


def test_luong_general_score_is_s_W_h_without_bias():
    """Luong et al. 2015, eq. 8: score(h_t, h_s) = h_t^T W_a h_s: d_query x d_memory weights and nothing else."""
    torch.manual_seed(0)
    attn = GeneralAttention(3, 5)
    assert sum(p.numel() for p in attn.parameters()) == 3 * 5
    s, h = torch.randn(2, 3), torch.randn(2, 4, 5)
    _, weights = attn(s, h)
    scores = torch.einsum("bq,qm,bsm->bs", s, attn.W.weight, h)
    torch.testing.assert_close(weights, scores.softmax(-1))


def test_int8_linear_on_no_rows_and_its_description():
    linear = Int8Linear(torch.nn.Linear(4, 6))
    assert linear(torch.zeros(0, 4)).shape == (0, 6)
    assert linear(torch.zeros(2, 0, 4), rows=slice(2, 6)).shape == (2, 0, 4)
    assert repr(linear) == "Int8Linear(in_features=4, out_features=6, bias=True)"
    assert "bias=False" in repr(Int8Linear(torch.nn.Linear(4, 6, bias=False)))


def test_cache_reorder_under_autograd_follows_the_index():
    cache = KVCache(3, 1, 4, 2)
    k = torch.arange(3 * 2 * 2, dtype=torch.float32).view(3, 1, 2, 2).requires_grad_()
    cache.update(0, k, k * 10)
    cache.reorder(torch.tensor([2, 0]))
    keys, values = cache.k[:, :2].transpose(1, 2), cache.v[:, :2].transpose(1, 2)
    torch.testing.assert_close(keys, k[[2, 0]])
    torch.testing.assert_close(values, k[[2, 0]] * 10)
    keys.sum().backward()
    assert k.grad[1].abs().sum() == 0 and k.grad[0].abs().sum() > 0


def test_weights_come_back_only_when_asked_for():
    torch.manual_seed(0)
    q = k = v = torch.randn(1, 2, 3, 4)
    assert scaled_dot_product_attention(q, k, v)[1] is None
    assert scaled_dot_product_attention(q, k, v, need_weights=True)[1].shape == (1, 2, 3, 3)
    attn = MultiHeadAttention(8, 2).eval()
    x = torch.randn(1, 3, 8)
    assert attn(x)[1] is None and attn(x, need_weights=True)[1].shape == (1, 2, 3, 3)


def test_sinusoid_table_with_an_odd_width_follows_the_formula():
    """d_model = 7: sines at 0, 2, 4, 6 and cosines at 1, 3, 5 (one fewer)."""
    from attnlab.layers.embedding import sinusoidal_table

    table = sinusoidal_table(5, 7, offset=3)
    assert table.shape == (5, 7)
    for pos in range(5):
        for j in range(7):
            angle = (pos + 3) / 10000 ** ((j - j % 2) / 7)
            expected = torch.tensor(angle).sin() if j % 2 == 0 else torch.tensor(angle).cos()
            assert abs(float(table[pos, j]) - float(expected)) < 1e-6


def test_feed_forward_has_no_dropout_unless_asked():
    """FFN(x) = max(0, x W1 + b1) W2 + b2 (eq. 2): by default the same in training as in evaluation."""
    from attnlab.layers.feed_forward import PositionwiseFeedForward

    torch.manual_seed(0)
    ffn = PositionwiseFeedForward(8, 16)
    x = torch.randn(2, 3, 8)
    assert ffn.dropout.p == 0.0
    expected = torch.relu(x @ ffn.linear1.weight.T + ffn.linear1.bias) @ ffn.linear2.weight.T + ffn.linear2.bias
    torch.testing.assert_close(ffn.train()(x), expected)
