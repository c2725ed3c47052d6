"""The RNN-era attention variants: Bahdanau (additive), Luong dot and general."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.layers.attention import AdditiveAttention, DotAttention, GeneralAttention, masked_attention

D = 6
VARIANTS = {
    "additive": lambda: AdditiveAttention(D, D, 5),
    "dot": lambda: DotAttention(D),
    "general": lambda: GeneralAttention(D, D),
}


def lengths_mask(lengths, s):
    return torch.arange(s)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("name", sorted(VARIANTS))
@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 7), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_weights_sum_to_one_over_real_positions_and_zero_on_padding(name, lengths, seed):
    torch.manual_seed(seed)
    attn = VARIANTS[name]()
    b, s = len(lengths), 7
    query, memory = torch.randn(b, D), torch.randn(b, s, D) * 3
    mask = lengths_mask(lengths, s)
    context, weights = attn(query, memory, mask)
    assert context.shape == (b, D) and weights.shape == (b, s)
    torch.testing.assert_close(weights.sum(-1), torch.ones(b), atol=1e-6, rtol=0)
    assert torch.all(weights[~mask] == 0)
    assert torch.all(weights[mask] > 0)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_padding_invariance_of_context(name):
    torch.manual_seed(0)
    attn = VARIANTS[name]()
    query, memory = torch.randn(3, D), torch.randn(3, 4, D)
    mask = lengths_mask([4, 2, 3], 4)
    context, weights = attn(query, memory, mask)
    # append 3 padded positions holding garbage, and scribble over the existing padding
    junk = torch.randn(3, 3, D) * 100
    memory2 = torch.cat([memory.masked_fill(~mask[..., None], 55.0), junk], dim=1)
    mask2 = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], dim=1)
    context2, weights2 = attn(query, memory2, mask2)
    torch.testing.assert_close(context2, context, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights2[:, :4], weights, atol=1e-7, rtol=0)
    assert torch.all(weights2[:, 4:] == 0)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_fully_masked_row_gives_zeros_not_nan_forward_and_backward(name):
    torch.manual_seed(1)
    attn = VARIANTS[name]()
    query = torch.randn(2, D, requires_grad=True)
    memory = torch.randn(2, 5, D, requires_grad=True)
    mask = lengths_mask([3, 0], 5)
    context, weights = attn(query, memory, mask)
    assert torch.equal(weights[1], torch.zeros(5)) and torch.equal(context[1], torch.zeros(D))
    assert torch.isfinite(context).all() and torch.isfinite(weights).all()
    (context.sum() + weights.sum()).backward()
    assert torch.isfinite(query.grad).all() and torch.isfinite(memory.grad).all()
    assert torch.equal(query.grad[1], torch.zeros(D))  # the empty row depends on nothing
    for p in attn.parameters():
        assert torch.isfinite(p.grad).all()


def test_dot_attention_hand_computed():
    # s = (1, 0), h_1 = (2, 0), h_2 = (0, 1), h_3 = padding: scores 2 and 0
    query = torch.tensor([[1.0, 0.0]])
    memory = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])
    context, weights = DotAttention(2)(query, memory, mask)
    e2 = torch.exp(torch.tensor(2.0))
    a1, a2 = e2 / (e2 + 1), 1 / (e2 + 1)  # 0.8808, 0.1192
    torch.testing.assert_close(weights, torch.tensor([[a1, a2, 0.0]]))
    torch.testing.assert_close(context, torch.tensor([[2 * a1, a2]]))
    assert abs(float(weights[0, 0]) - 0.880797) < 1e-6


def test_general_attention_is_dot_attention_on_w_h():
    torch.manual_seed(2)
    general = GeneralAttention(4, 3)
    query, memory = torch.randn(2, 4), torch.randn(2, 5, 3)
    mask = lengths_mask([5, 2], 5)
    _, w = general(query, memory, mask)
    scores = torch.einsum("bq,qm,bsm->bs", query, general.W.weight, memory)
    expected = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    torch.testing.assert_close(w, expected)


def test_additive_attention_formula_and_precompute():
    torch.manual_seed(3)
    attn = AdditiveAttention(4, 3, 5)
    query, memory = torch.randn(2, 4), torch.randn(2, 6, 3)
    mask = lengths_mask([6, 4], 6)
    c, w = attn(query, memory, mask)
    c_pre, w_pre = attn(query, memory, mask, precomputed=attn.precompute(memory))
    assert torch.equal(c, c_pre) and torch.equal(w, w_pre)
    ws, wh, b, v = attn.query_proj.weight, attn.memory_proj.weight, attn.memory_proj.bias, attn.v.weight[0]
    scores = torch.tanh((query @ ws.T)[:, None] + memory @ wh.T + b) @ v  # v^T tanh(W_s s + W_h h + b)
    expected = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    torch.testing.assert_close(w, expected)
    torch.testing.assert_close(c, torch.einsum("bs,bsm->bm", expected, memory))


def test_no_mask_attends_everywhere():
    torch.manual_seed(4)
    _, w = AdditiveAttention(D, D)(torch.randn(2, D), torch.randn(2, 3, D))
    assert torch.all(w > 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(2))


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="d_query == d_memory"):
        DotAttention(4, 5)
    attn = GeneralAttention(4, 3)
    with pytest.raises(ValueError, match="d_query=4, d_memory=3"):
        attn(torch.randn(2, 3), torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"query \(B, d_q\) and memory \(B, S, d_m\)"):
        attn(torch.randn(2, 1, 4), torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="mask must be bool"):
        attn(torch.randn(2, 4), torch.randn(2, 5, 3), torch.ones(2, 5))
    with pytest.raises(ValueError, match="mask must be bool of shape"):
        masked_attention(torch.randn(2, 5), torch.randn(2, 5, 3), torch.ones(2, 4, dtype=torch.bool))
