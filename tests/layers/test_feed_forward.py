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


def test_fused_ffn_gradients_for_each_subset_of_inputs(monkeypatch):
    """Each gradient is computed only when asked for, and right when it is (frozen weights, frozen input,
    biases alone, a missing second bias)."""
    torch.manual_seed(0)
    n, d, d_ff, p = 5, 3, 8, 0.25
    mask = fixed_mask(monkeypatch, (n, d_ff), p)
    full = [torch.randn(n, d, dtype=torch.float64), torch.randn(d_ff, d, dtype=torch.float64),
            torch.randn(d_ff, dtype=torch.float64), torch.randn(d, d_ff, dtype=torch.float64),
            torch.randn(d, dtype=torch.float64)]
    grad = torch.randn(n, d, dtype=torch.float64)
    for wanted, b2_present in [((0,), True), ((1, 3), True), ((2, 4), True), ((2,), False), ((3, 4), True)]:
        inputs = [t.clone().requires_grad_(i in wanted) for i, t in enumerate(full)]
        if not b2_present:
            inputs[4] = None
        x, w1, b1, w2, b2 = inputs
        ours = _ReluDropoutFFN.apply(x, w1, b1, w2, b2, p)
        hidden = torch.relu(x @ w1.t() + b1).masked_fill(mask, 0) / (1 - p)
        ref = hidden @ w2.t() + (b2 if b2 is not None else 0)
        torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
        ours_grads = torch.autograd.grad(ours, [inputs[i] for i in wanted], grad)
        ref_grads = torch.autograd.grad(ref, [inputs[i] for i in wanted], grad)
        for i, a, b in zip(wanted, ours_grads, ref_grads):
            assert a is not None, f"no gradient for input {i} with {wanted} requiring grad"
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_gelu_and_silu_networks_by_formula_in_eval_and_in_training():
    """FFN(x) = act(x W1 + b1) W2 + b2; in training with a dropout too small to drop anything (p = 1e-9) the
    function is the same: the fused path is for ReLU only."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4)
    for name, act in [("gelu", torch.nn.functional.gelu), ("silu", torch.nn.functional.silu)]:
        ffn = PositionwiseFeedForward(4, 8, dropout=1e-9, activation=name)
        expected = ffn.linear2(act(ffn.linear1(x)))
        torch.testing.assert_close(ffn.eval()(x), expected)
        torch.testing.assert_close(ffn.train()(x), expected)


def test_relu_network_drops_everything_at_p_1_and_takes_the_fused_path_only_with_gradients(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4)
    ffn = PositionwiseFeedForward(4, 8, dropout=1.0).train()
    torch.testing.assert_close(ffn(x), ffn.linear2.bias.expand(2, 3, 4))  # every hidden unit dropped: b2
    ffn = PositionwiseFeedForward(4, 8, dropout=0.25).train()
    calls = []
    real = _ReluDropoutFFN.apply
    monkeypatch.setattr(_ReluDropoutFFN, "apply", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        ffn(x)
    assert not calls  # written for training: without gradients the module's own dropout runs
    ffn(x)
    assert calls
    ffn_nobias = PositionwiseFeedForward(4, 8, bias=False).eval()
    torch.testing.assert_close(ffn_nobias(x), torch.relu(x @ ffn_nobias.linear1.weight.t()) @ ffn_nobias.linear2.weight.t())
