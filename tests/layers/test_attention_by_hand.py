"""Each attention variant on a tiny case worked by hand: the numbers in the comments are the formula's,
computed with a pocket calculator, not with the code under test. (Luong's dot score by hand:
tests/layers/test_rnn_attention.py::test_dot_attention_hand_computed.)"""
import pytest
import torch

from attnlab.layers.attention import AdditiveAttention, GeneralAttention, scaled_dot_product_attention


@pytest.mark.parametrize("need_weights", [False, True])  # the fused kernel and the explicit softmax
def test_scaled_dot_product_by_hand(need_weights):
    """q = (1, 0), keys (1, 0), (0, 1), (1, 1), d_k = 2: scores q.k / sqrt(2) = 0.707107, 0, 0.707107;
    e^0.707107 = 2.028115, so softmax = (2.028115, 1, 2.028115) / 5.056230 = 0.401112, 0.197776, 0.401112.
    Values (1, 0), (0, 2), (3, 1): out = 0.401112 (1, 0) + 0.197776 (0, 2) + 0.401112 (3, 1) = (1.604448, 0.796664).
    The third key masked: (2.028115, 1) / 3.028115 = 0.669762, 0.330238; out = (0.669762, 0.660477)."""
    q = torch.tensor([[[[1.0, 0.0]]]])  # (B, H, T, d_k) = (1, 1, 1, 2)
    k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]])
    v = torch.tensor([[[[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]]]])
    out, w = scaled_dot_product_attention(q, k, v, need_weights=need_weights)
    torch.testing.assert_close(out.flatten(), torch.tensor([1.604448, 0.796664]), atol=1e-6, rtol=0)
    if need_weights:
        torch.testing.assert_close(w.flatten(), torch.tensor([0.401112, 0.197776, 0.401112]), atol=1e-6, rtol=0)
    mask = torch.tensor([True, True, False]).view(1, 1, 1, 3)  # (B, H, T, S), True = may attend
    out, w = scaled_dot_product_attention(q, k, v, mask=mask, need_weights=need_weights)
    torch.testing.assert_close(out.flatten(), torch.tensor([0.669762, 0.660477]), atol=1e-6, rtol=0)
    if need_weights:
        torch.testing.assert_close(w.flatten(), torch.tensor([0.669762, 0.330238, 0.0]), atol=1e-6, rtol=0)


def test_additive_bahdanau_by_hand():
    """score(s, h) = v^T tanh(W_s s + W_h h + b), with W_s = I, W_h = [[1, 1], [0, -1]], b = (0, 0.5), v = (1, 2).
    s = (0.5, -1): W_s s = (0.5, -1).
    h_1 = (1, 0): W_h h_1 + b = (1, 0.5);  tanh(1.5, -0.5) = (0.905148, -0.462117); score 0.905148 - 0.924234 = -0.019086.
    h_2 = (2, 1): W_h h_2 + b = (3, -0.5); tanh(3.5, -1.5) = (0.998178, -0.905148); score 0.998178 - 1.810296 = -0.812119.
    softmax: 1 / (1 + e^-0.793033) = 0.688482, 0.311518; context 0.688482 (1, 0) + 0.311518 (2, 1) = (1.311518, 0.311518)."""
    attn = AdditiveAttention(2, 2, 2)
    with torch.no_grad():
        attn.query_proj.weight.copy_(torch.eye(2))
        attn.memory_proj.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, -1.0]]))
        attn.memory_proj.bias.copy_(torch.tensor([0.0, 0.5]))
        attn.v.weight.copy_(torch.tensor([[1.0, 2.0]]))
    s = torch.tensor([[0.5, -1.0]])
    h = torch.tensor([[[1.0, 0.0], [2.0, 1.0]]])
    torch.testing.assert_close(attn.score(s, h, attn.precompute(h)), torch.tensor([[-0.019086, -0.812119]]),
                               atol=1e-6, rtol=0)
    context, w = attn(s, h)
    torch.testing.assert_close(w, torch.tensor([[0.688482, 0.311518]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(context, torch.tensor([[1.311518, 0.311518]]), atol=1e-6, rtol=0)


def test_general_luong_by_hand():
    """score(s, h) = s^T W h, W = [[2, 0], [1, 1]], s = (1, -1):
    h_1 = (1, 0): W h_1 = (2, 1), score 1;  h_2 = (0, 1): W h_2 = (0, 1), score -1;  h_3 = (1, 1): W h_3 = (2, 2), score 0.
    softmax(1, -1, 0) = (e, e^-1, 1) / 4.086161 = 0.665241, 0.090031, 0.244728;
    context = 0.665241 (1, 0) + 0.090031 (0, 1) + 0.244728 (1, 1) = (0.909969, 0.334759).
    h_3 masked: softmax(1, -1) = 0.880797, 0.119203; context (0.880797, 0.119203)."""
    attn = GeneralAttention(2, 2)
    with torch.no_grad():
        attn.W.weight.copy_(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
    s = torch.tensor([[1.0, -1.0]])
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    context, w = attn(s, h)
    torch.testing.assert_close(w, torch.tensor([[0.665241, 0.090031, 0.244728]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(context, torch.tensor([[0.909969, 0.334759]]), atol=1e-6, rtol=0)
    context, w = attn(s, h, mask=torch.tensor([[True, True, False]]))
    torch.testing.assert_close(w, torch.tensor([[0.880797, 0.119203, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(context, torch.tensor([[0.880797, 0.119203]]), atol=1e-6, rtol=0)


def test_attention_dropout_drops_the_weights_on_the_explicit_path():
    """With need_weights (the explicit softmax), dropout_p applies F.dropout to the weights before they meet V."""
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 2, 3, 4, generator=g), torch.randn(2, 2, 5, 4, generator=g), torch.randn(2, 2, 5, 4, generator=g)
    torch.manual_seed(1)
    out, w = scaled_dot_product_attention(q, k, v, dropout_p=0.5, need_weights=True)
    torch.manual_seed(1)
    expected = torch.nn.functional.dropout(w, 0.5) @ v
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, w @ v)  # something was dropped
