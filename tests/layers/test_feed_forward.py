"""The fused ReLU + dropout feed-forward network of CPU training: the same function as the modules."""
import torch

import attnlab.layers.feed_forward as ff
from attnlab.layers.feed_forward import PositionwiseFeedForward, _ReluDropoutFFN


def fixed_mask(monkeypatch, shape, p, seed=0):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p
    monkeypatch.setattr(ff, "drop_relu_", lambda hidden, p_: hidden.masked_fill_(mask, 0).relu_())
    return mask


def test_fused_ffn_equals_relu_dropout_linear_with_the_same_mask(monkeypatch):
    torch.manual_seed(0)
    n, d, d_ff, p = 9, 6, 16, 0.3
    mask = fixed_mask(monkeypatch, (n, d_ff), p)
    x, w1, b1 = (torch.randn(n, d, dtype=torch.float64, requires_grad=True), torch.randn(d_ff, d, dtype=torch.float64,
                 requires_grad=True), torch.randn(d_ff, dtype=torch.float64, requires_grad=True))
    w2, b2 = torch.randn(d, d_ff, dtype=torch.float64, requires_grad=True), torch.randn(d, dtype=torch.float64, requires_grad=True)
    inputs = (x, w1, b1, w2, b2)
    ours = _ReluDropoutFFN.apply(*inputs, p)
    ref = torch.nn.functional.linear(torch.relu(x @ w1.t() + b1).masked_fill(mask, 0) / (1 - p), w2, b2)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ours, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda *t: _ReluDropoutFFN.apply(*t, p), inputs)
    assert torch.autograd.gradcheck(lambda a, c: _ReluDropoutFFN.apply(a, c, None, w2, None, p), (x, w1))


def test_module_takes_the_fused_path_in_fp32_training_and_matches(monkeypatch):
    torch.manual_seed(0)
    ffn = PositionwiseFeedForward(8, 32, dropout=0.25).train()
    x = torch.randn(2, 5, 8, requires_grad=True)
    mask = fixed_mask(monkeypatch, (10, 32), 0.25)
    calls = []
    real = _ReluDropoutFFN.apply
    monkeypatch.setattr(_ReluDropoutFFN, "apply", lambda *a: calls.append(1) or real(*a))
    out = ffn(x)
    assert calls and out.shape == (2, 5, 8)
    hidden = torch.relu(ffn.linear1(x)).masked_fill(mask.view(2, 5, 32), 0) / 0.75
    torch.testing.assert_close(out, ffn.linear2(hidden), atol=1e-5, rtol=1e-5)
    ffn.eval()
    calls.clear()
    torch.testing.assert_close(ffn(x), ffn.linear2(torch.relu(ffn.linear1(x))))
    assert not calls  # eval: no dropout, the plain (decoding) path
