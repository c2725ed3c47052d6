"""Add & Norm (paper, section 3.1) against its formula by hand, with the default settings."""
import torch

from attnlab.layers.residual import AddNorm


def layer_norm_by_hand(y, eps):
    mean = y.mean(-1, keepdim=True)
    var = ((y - mean) ** 2).mean(-1, keepdim=True)
    return (y - mean) / torch.sqrt(var + eps)


def test_post_norm_by_default_with_eps_1e_5_and_no_dropout():
    """LayerNorm(x + Sublayer(x)); values with variance ~1e-5 make eps matter (2e-5 would be off by ~20%)."""
    torch.manual_seed(0)
    add_norm = AddNorm(6).train()  # training mode: a default dropout would drop
    x = torch.randn(4, 6) * 3e-3
    sublayer = lambda t: t.flip(-1)  # noqa: E731
    expected = layer_norm_by_hand(x + x.flip(-1), 1e-5)
    torch.testing.assert_close(add_norm(x, sublayer), expected, atol=1e-5, rtol=1e-5)
    assert not add_norm.norm_first


def test_pre_norm_adds_the_sublayer_of_the_normalised_input():
    torch.manual_seed(0)
    add_norm = AddNorm(6, norm_first=True).eval()
    x = torch.randn(4, 6)
    torch.testing.assert_close(add_norm(x, lambda t: t.flip(-1)), x + layer_norm_by_hand(x, 1e-5).flip(-1),
                               atol=1e-5, rtol=1e-5)
