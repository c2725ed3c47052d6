"""PyTorch-operations dropout (no kernel): the mask's documented layout, its gradient, and p = 1."""
import torch

from attnlab.layers.dropout import drop_mask, dropout


def test_drop_mask_reads_four_15_bit_lanes_per_int64_draw():
    """Each int64 from random_() gives four int16 lanes; a lane's low 15 bits below round(p * 2^15) drop it."""
    n, p = 200_003, 0.3  # ~6 lanes equal to the threshold: not dropped
    torch.manual_seed(0)
    mask = drop_mask(torch.Size([n]), p, torch.device("cpu"))
    torch.manual_seed(0)
    draws = torch.empty(50_001, dtype=torch.int64).random_()
    lanes = [(int(d) >> (16 * i)) & 0x7FFF for d in draws for i in range(4)][:n]
    assert mask.tolist() == [lane < round(p * 2**15) for lane in lanes]


def test_dropout_without_the_kernel_backward_uses_the_mask_and_the_scale():
    torch.manual_seed(0)
    x = torch.randn(64, 33, dtype=torch.float64, requires_grad=True)  # float64: the kernel takes float32 only
    y = dropout(x, 0.25)
    kept = y.detach() != 0
    torch.testing.assert_close(y.detach(), (x.detach() / 0.75) * kept)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.double() / 0.75)
    assert 0.15 < 1 - kept.double().mean() < 0.35


def test_dropout_with_p_1_drops_everything():
    x = torch.randn(5, 7, requires_grad=True)
    assert torch.equal(dropout(x, 1.0), torch.zeros(5, 7))
    assert torch.equal(dropout(x.double(), 1.0), torch.zeros(5, 7, dtype=torch.float64))
