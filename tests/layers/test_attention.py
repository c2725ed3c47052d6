"""Multi-head attention: parity with torch.nn.MultiheadAttention, masks, weights, autocast."""
import math

import pytest
import torch
from torch import nn

from attnlab.layers.attention import MultiHeadAttention, scaled_dot_product_attention
from attnlab.layers.masks import causal_mask, padding_mask


def copy_into_torch_mha(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(ours.d_model, ours.n_heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.in_proj.weight)
        ref.in_proj_bias.copy_(ours.in_proj.bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    return ref.eval()


def randomize(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)


@pytest.mark.parametrize("need_weights", [False, True])
def test_self_attention_matches_torch_multihead_attention(need_weights):
    torch.manual_seed(0)
    ours = MultiHeadAttention(32, 4).eval()
    randomize(ours)
    ref = copy_into_torch_mha(ours)
    x = torch.randn(3, 7, 32)
    lengths = torch.tensor([7, 4, 1])
    keep = torch.arange(7)[None, :] < lengths[:, None]  # (B, S) True = real token
    out, w = ours(x, mask=keep[:, None, None, :], need_weights=need_weights)
    ref_out, ref_w = ref(x, x, x, key_padding_mask=~keep, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)


def test_cross_attention_matches_torch_multihead_attention():
    torch.manual_seed(1)
    ours = MultiHeadAttention(24, 3).eval()
    randomize(ours)
    ref = copy_into_torch_mha(ours)
    q, mem = torch.randn(2, 5, 24), torch.randn(2, 9, 24)
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, 6:] = False
    out, w = ours(q, memory=mem, mask=keep[:, None, None, :], need_weights=True)
    ref_out, ref_w = ref(q, mem, mem, key_padding_mask=~keep, average_attn_weights=False)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
    # precomputed keys/values give the same result
    out2, _ = ours(q, memory_kv=ours.project_kv(mem), mask=keep[:, None, None, :])
    torch.testing.assert_close(out2, out, atol=1e-6, rtol=1e-6)


def test_weights_sum_to_one_over_unmasked_keys_and_zero_on_masked():
    torch.manual_seed(2)
    attn = MultiHeadAttention(16, 2).eval()
    x = torch.randn(2, 6, 16)
    tokens = torch.tensor([[5, 6, 7, 8, 0, 0], [5, 6, 7, 8, 9, 10]])
    mask = padding_mask(tokens, 0) & causal_mask(6)
    _, w = attn(x, mask=mask, need_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 6))
    assert float(w.masked_select(~mask.expand_as(w)).abs().max()) == 0.0


def test_scaled_dot_product_formula():
    torch.manual_seed(3)
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 2)
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1) @ v
    for need_weights in (False, True):
        out, _ = scaled_dot_product_attention(q, k, v, need_weights=need_weights)
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("need_weights", [False, True])
def test_fully_masked_rows_give_zeros_not_nan(need_weights):
    torch.manual_seed(4)
    attn = MultiHeadAttention(16, 2)
    x = torch.randn(2, 4, 16, requires_grad=True)
    mask = torch.ones(2, 1, 1, 4, dtype=torch.bool)
    mask[1] = False  # a sequence that is all padding
    out, w = attn(x, mask=mask, need_weights=need_weights)
    assert torch.isfinite(out).all()
    # with no key to attend to, the attention output is 0, so the layer returns out_proj's bias
    torch.testing.assert_close(out[1], attn.out_proj.bias.expand(4, 16))
    if need_weights:
        assert float(w[1].abs().sum()) == 0.0
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


@pytest.mark.parametrize("need_weights", [False, True])
def test_bf16_autocast_in_eval_mode(need_weights):
    # torch.nn.MultiheadAttention's eval fast path fails under CPU bf16 autocast; ours must not.
    torch.manual_seed(5)
    attn = MultiHeadAttention(32, 4).eval()
    x = torch.randn(2, 6, 32)
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[0, ..., 4:] = False
    with torch.no_grad():
        ref, _ = attn(x, mask=mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = attn(x, mask=mask, need_weights=need_weights)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)


def test_d_model_not_divisible_by_heads_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        MultiHeadAttention(30, 4)


def test_default_is_no_dropout_with_biases_and_cross_attention_from_projected_memory():
    """MultiHeadAttention(d, h): no attention dropout (training = evaluation), biases on the projections; cross-
    attention from `memory` equals attention from its precomputed keys/values (project_kv)."""
    torch.manual_seed(0)
    attention = MultiHeadAttention(8, 2)
    assert attention.in_proj.bias is not None and attention.out_proj.bias is not None
    randomize(attention)
    x, memory = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    keep = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])[:, None, None, :]
    trained, _ = attention.train()(x, memory, mask=keep, need_weights=True)
    evaluated, weights = attention.eval()(x, memory, mask=keep, need_weights=True)
    torch.testing.assert_close(trained, evaluated)
    precomputed, _ = attention(x, mask=keep, memory_kv=attention.project_kv(memory))
    torch.testing.assert_close(precomputed, evaluated, atol=1e-6, rtol=1e-6)
    assert float(weights[1, :, :, 2:].detach().abs().sum()) == 0.0
