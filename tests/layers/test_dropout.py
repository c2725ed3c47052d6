"""attnlab's CPU dropout: the function of torch.nn.Dropout with a cheaper mask."""
import pytest
import torch

from attnlab.layers.dropout import Dropout, drop_mask


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_mask_rate_is_p_in_every_lane_of_a_draw(p):
    torch.manual_seed(0)
    n = 400_000
    mask = drop_mask(torch.Size((n,)), p, torch.device("cpu"))
    # four 15-bit lanes per 64-bit draw: each lane, the top one included, drops at rate p
    rates = mask.view(-1, 4).float().mean(0)
    assert torch.all((rates - p).abs() < 0.005), rates
    # neighbouring elements are independent: P(both dropped) = p^2
    pairs = mask.view(-1, 2)
    assert abs(float((pairs[:, 0] & pairs[:, 1]).float().mean()) - p * p) < 0.003


@pytest.mark.parametrize("shape", [(7, 3), (5, 1, 9), (1,), (64, 33)])
def test_dropout_scales_survivors_and_backward_uses_the_same_mask(shape):
    torch.manual_seed(1)
    drop = Dropout(0.25).train()
    x = torch.randn(shape, requires_grad=True)
    y = drop(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)


def test_dropout_is_identity_in_eval_and_at_p_zero():
    x = torch.randn(4, 5)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
