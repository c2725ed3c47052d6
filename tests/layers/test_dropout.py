"""attnlab's CPU dropout: the function of torch.nn.Dropout with a cheaper mask."""

import pytest
import torch

import attnlab.layers.dropout as dropout_module
from attnlab.layers.dropout import Dropout, drop_mask, drop_relu_, dropout, kernel_applies, kernel_mask, new_seed
from required import needs_kernel


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


# ---- the C kernel (dropout_kernel.c): Philox4x32-10 masks, drawn again in backward --------------


def philox4x32_10(counter: int, key: int) -> list[int]:
    """The reference generator (Salmon et al. 2011), in Python: counter (c0 + 2^32 c1, c2 = c3 = 0)."""
    m32 = 0xFFFFFFFF
    c = [counter & m32, counter >> 32, 0, 0]
    k0, k1 = key & m32, key >> 32
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & m32, (p0 >> 32) ^ c[3] ^ k1, p0 & m32]
        k0, k1 = (k0 + 0x9E3779B9) & m32, (k1 + 0xBB67AE85) & m32
    return c


def kernel_bits(n: int, seed: int) -> list[int]:
    bits = torch.empty(n, dtype=torch.int16)
    dropout_module.KERNELS.get().attnlab_random_bits16(bits.data_ptr(), n, seed)
    return bits.view(torch.uint16).to(torch.int32).tolist()


@needs_kernel
def test_kernel_draws_philox_known_answers_in_its_documented_layout():
    assert philox4x32_10(0, 0) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]  # Random123's known answer
    seed = 0x243F6A8885A308D3
    bits = kernel_bits(300, seed)  # 4 full groups of 64 and a partial one (the scalar tail)
    for i in range(300):  # element 64 g + 16 w + 8 h + l: half h of word w of counter 8 g + l
        g, w, h, lane = i // 64, (i % 64) // 16, (i % 16) // 8, i % 8
        assert bits[i] == (philox4x32_10(8 * g + lane, seed)[w] >> (16 * h)) & 0xFFFF, i


@needs_kernel
@pytest.mark.parametrize("p", [0.1, 0.3])
def test_kernel_mask_rate_is_p_at_every_position_and_neighbours_are_independent(p):
    mask = kernel_mask((20_000, 64), p, seed=12345)
    assert torch.all((mask.float().mean(0) - p).abs() < 0.015)  # each of a group's 64 positions
    assert abs(float(mask.float().mean()) - p) < 0.002
    pairs = mask.view(-1, 2)
    assert abs(float((pairs[:, 0] & pairs[:, 1]).float().mean()) - p * p) < 0.003
    assert not torch.equal(mask, kernel_mask((20_000, 64), p, seed=12346))


@needs_kernel
def test_kernel_dropout_uses_one_mask_forward_and_backward_whatever_the_threads():
    x = torch.randn(3000, 70, requires_grad=True)
    torch.manual_seed(7)
    seed = new_seed()
    expected = x.detach().masked_fill(kernel_mask(x.shape, 0.2, seed), 0) * (1.0 / 0.8)  # the kernel multiplies
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, threads):
            torch.set_num_threads(n_threads)
            torch.manual_seed(7)  # the same seed again
            y = dropout(x, 0.2)
            torch.testing.assert_close(y, expected, atol=0, rtol=0)
            grad = torch.randn_like(y)
            (gx,) = torch.autograd.grad(y, x, grad)
            torch.testing.assert_close(gx, grad.masked_fill(expected == 0, 0) * (1.0 / 0.8), atol=0, rtol=0)
    finally:
        torch.set_num_threads(threads)
    assert not torch.equal(dropout(x, 0.2), y)  # a fresh seed per call


@needs_kernel
def test_kernel_relu_dropout_in_place_keeps_nan_like_relu():
    h = torch.randn(257, 33)
    h[0, :8] = float("nan")
    torch.manual_seed(3)
    seed = new_seed()
    expected = torch.relu(h).masked_fill(kernel_mask(h.shape, 0.25, seed), 0)
    torch.manual_seed(3)
    out = drop_relu_(h, 0.25)
    assert out is h
    torch.testing.assert_close(h, expected, atol=0, rtol=0, equal_nan=True)


def test_without_the_kernel_dropout_takes_pytorchs_operations(monkeypatch):
    monkeypatch.setattr(dropout_module.KERNELS, "state", {"fns": None})
    assert not kernel_applies(torch.randn(3))
    x = torch.randn(50, 40, requires_grad=True)
    y = dropout(x, 0.25)
    kept = y != 0
    assert 0.6 < float(kept.float().mean()) < 0.9
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    h = torch.randn(50, 40)
    out = drop_relu_(h.clone(), 0.25)
    assert torch.all((out == 0) | (out == torch.relu(h)))
    assert not kernel_applies(torch.randn(3, 4).t())  # (also with the kernel) not contiguous
