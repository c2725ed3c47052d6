"""The label-smoothed loss against PyTorch's: attnlab's convention is F.cross_entropy(label_smoothing=eps)'s.

Both spread eps uniformly over the WHOLE vocabulary, the target and the pad column included:
    q = (1 - eps) onehot(y) + eps / V,    loss = -sum_j q_j log p_j
(not the fairseq/Szegedy variant eps / (V - 1) over the other classes, nor one that excludes the pad column).
So label_smoothed_nll(logits, y, pad, eps)'s loss equals
F.cross_entropy(logits, y, ignore_index=pad, label_smoothing=eps, reduction="sum"), value and gradient, and its
NLL equals the same with label_smoothing=0. The fused backward is checked with gradcheck in float64,
the fused projection + loss against PyTorch's in float64.
"""
import pytest
import torch
import torch.nn.functional as F

from attnlab.training.loss import label_smoothed_nll, projected_label_smoothed_nll

PAD = 1  # not 0: a pad id inside the vocabulary, away from the first column


def batch(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 4, 7, generator=g)).to(dtype)
    target = torch.randint(0, 7, (3, 4), generator=g)
    target[0, 2:] = PAD
    target[2, 1] = PAD
    target[1, 0] = 0  # a real token with id 0
    return logits, target


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_loss_and_gradient_equal_cross_entropy_with_label_smoothing(eps):
    logits, target = batch()
    ours_in = logits.clone().requires_grad_()
    ref_in = logits.clone().requires_grad_()
    loss, nll = label_smoothed_nll(ours_in, target, pad_id=PAD, smoothing=eps)
    ref = F.cross_entropy(ref_in.flatten(0, 1), target.flatten(), ignore_index=PAD, label_smoothing=eps, reduction="sum")
    ref_nll = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=PAD, reduction="sum")
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(nll, ref_nll, atol=1e-5, rtol=1e-6)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, atol=1e-6, rtol=1e-5)
    assert float(ours_in.grad[0, 2:].abs().max()) == 0.0  # pad rows get no gradient


def test_the_other_smoothing_convention_is_not_the_one_used():
    """eps / (V - 1) on the non-targets (Szegedy et al.) gives another loss here: the test above can tell them apart."""
    logits, target = batch()
    eps, vocab = 0.1, logits.size(-1)
    loss, _ = label_smoothed_nll(logits, target, pad_id=PAD, smoothing=eps)
    logp = logits.flatten(0, 1).log_softmax(-1)
    y = target.flatten()
    q = torch.full_like(logp, eps / (vocab - 1)).scatter_(1, y[:, None], 1 - eps)
    other = -(q * logp).sum(-1)[y != PAD].sum()
    assert abs(float(loss - other)) > 1e-2


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_fused_backward_passes_gradcheck(eps):
    logits, target = batch(torch.float64)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: label_smoothed_nll(x, target, PAD, eps)[0], (logits,))


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_projected_loss_equals_cross_entropy_of_the_projection_in_float64(eps):
    """The fused projection + loss computes its gradients in forward (gradcheck's repeated backward through one
    graph is refused by design), so it is held to PyTorch's loss in float64 instead, in blocks of 2 rows."""
    _, target = batch()
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(12, 5, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    flat = target.flatten()
    loss, nll = projected_label_smoothed_nll(hidden, weight, flat, PAD, eps, block_bytes=2 * 4 * 7)
    grads = torch.autograd.grad(loss, (hidden, weight))
    logits = F.linear(hidden, weight)
    ref = F.cross_entropy(logits, flat, ignore_index=PAD, label_smoothing=eps, reduction="sum")
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    torch.testing.assert_close(loss, ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(nll, F.cross_entropy(logits, flat, ignore_index=PAD, reduction="sum"), atol=1e-12, rtol=1e-12)
    for ours, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-12)


def test_bf16_logits_give_the_float32_loss_of_the_same_values():
    """bf16 logits are widened a block of 1,024 rows at a time: 2,100 rows cross two block edges."""
    g = torch.Generator().manual_seed(3)
    logits = (3 * torch.randn(2100, 11, generator=g)).bfloat16()
    target = torch.randint(0, 11, (2100,), generator=g)
    target[::7] = PAD
    ours_in, ref_in = logits.clone().requires_grad_(), logits.float().requires_grad_()
    loss, nll = label_smoothed_nll(ours_in[None], target[None], PAD, 0.1)
    ref = F.cross_entropy(ref_in, target, ignore_index=PAD, label_smoothing=0.1, reduction="sum")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, atol=0, rtol=1e-5)
    torch.testing.assert_close(nll, F.cross_entropy(logits.float(), target, ignore_index=PAD, reduction="sum"),
                               atol=0, rtol=1e-5)
    loss.backward()
    ref.backward()
    assert ours_in.grad.dtype == torch.bfloat16
    torch.testing.assert_close(ours_in.grad.float(), ref_in.grad, atol=4e-3, rtol=0)  # bf16 rounding of the gradient


def test_default_smoothing_is_the_papers_0_1():
    logits, target = batch()
    assert torch.equal(label_smoothed_nll(logits, target, PAD)[0], label_smoothed_nll(logits, target, PAD, 0.1)[0])
    hidden, weight = torch.randn(12, 5), torch.randn(7, 5)
    flat = target.flatten()
    assert torch.equal(projected_label_smoothed_nll(hidden, weight, flat, PAD)[0],
                       projected_label_smoothed_nll(hidden, weight, flat, PAD, 0.1)[0])


@pytest.mark.parametrize("frozen", ["weight", "hidden"])
def test_projected_loss_with_one_input_frozen(frozen):
    """A frozen output layer (or frozen states) still gives the other input its exact gradient."""
    _, target = batch()
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(12, 5, dtype=torch.float64, generator=g, requires_grad=frozen != "hidden")
    weight = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=frozen != "weight")
    flat = target.flatten()
    loss, _ = projected_label_smoothed_nll(hidden, weight, flat, PAD, 0.1)
    loss.backward()
    ref_h, ref_w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    F.cross_entropy(F.linear(ref_h, ref_w), flat, ignore_index=PAD, label_smoothing=0.1, reduction="sum").backward()
    learnt, ref_grad = (hidden, ref_h) if frozen == "weight" else (weight, ref_w)
    torch.testing.assert_close(learnt.grad, ref_grad.grad, atol=1e-12, rtol=1e-12)
