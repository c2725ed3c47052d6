"""Packed (unpadded) training: the same logits and gradients as the padded computation, for real tokens."""
import pytest
import torch

from attnlab import Transformer, TransformerConfig
from attnlab.layers.packing import Packing


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, 40, (4, 9), generator=g)
    src[1, 5:] = 0
    src[2, 2:] = 0
    tgt = torch.randint(3, 40, (4, 7), generator=g)
    tgt[0, 4:] = 0
    tgt[3, 1:] = 0
    return src, tgt


def test_pack_and_unpack_are_inverse_and_differentiable():
    keep = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    p = Packing(keep)
    x = torch.randn(3, 3, 4, dtype=torch.double, requires_grad=True)
    packed = p.pack(x)
    assert packed.shape == (5, 4) and p.n_tokens == 5
    unpacked = p.unpack(packed)
    torch.testing.assert_close(unpacked[keep], x[keep])
    assert float(unpacked[~keep].abs().sum()) == 0.0
    assert torch.autograd.gradcheck(lambda t: p.unpack(p.pack(t).sin()), (x,))
    y = torch.randn(5, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: p.pack(p.unpack(t) * 3), (y,))
    with pytest.raises(ValueError, match="bool"):
        Packing(keep.long())


@pytest.mark.parametrize("overrides", [{}, {"norm_first": True}, {"positional": "learned", "share_embeddings": False},
                                       {"bias": False, "activation": "gelu"}])
def test_packed_forward_and_gradients_equal_the_padded_ones(overrides):
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=32, n_heads=4, n_layers=2, d_ff=64,
                            dropout=0.0, **{"share_embeddings": True, **overrides})
    model = Transformer(cfg).train()
    src, tgt = batch()
    keep = tgt != 0
    padded = model(src, tgt)[keep]
    grads_padded = torch.autograd.grad(padded.square().sum(), list(model.parameters()), allow_unused=True)
    packed = model(src, tgt, positions=keep)
    grads_packed = torch.autograd.grad(packed.square().sum(), list(model.parameters()), allow_unused=True)
    assert packed.shape == (int(keep.sum()), 40)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_packed, grads_padded):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, atol=3e-5, rtol=1e-4)


def test_packed_positions_must_match_the_target():
    model = Transformer(TransformerConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=32, n_heads=4, n_layers=1,
                                          d_ff=64))
    src, tgt = batch()
    with pytest.raises(ValueError, match="positions must have the shape"):
        model(src, tgt, positions=torch.ones(4, 3, dtype=torch.bool))


def test_trainer_losses_are_the_same_packed_or_padded(tmp_path):
    """Three training steps give the same losses in either layout (dropout off). Parameters are not
    compared: the key bias has a zero gradient in theory (softmax ignores a constant added to every
    score), so Adam turns float noise there into +-lr steps, which change no output."""
    from attnlab.data.batching import collate
    from attnlab.training.config import TrainConfig
    from attnlab.training.loop import Trainer

    src, tgt = batch(1)
    examples = [([t for t in s.tolist() if t] or [3], [1] + [t for t in r.tolist() if t] + [2]) for s, r in zip(src, tgt)]
    losses = []
    # packed with the projection inside the loss (the CPU fp32 default), packed with logits, padded
    for packed, projected in ((True, True), (True, False), (False, False)):
        torch.manual_seed(0)
        model = Transformer(TransformerConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=32, n_heads=4,
                                              n_layers=2, d_ff=64, dropout=0.0, share_embeddings=True))
        model.trains_packed = packed
        trainer = Trainer(model, examples, None, TrainConfig(amp="none", warmup_steps=10),
                          tmp_path / f"{packed}{projected}", progress=False)
        assert trainer.projected_loss == packed  # on by default on the CPU in fp32
        trainer.projected_loss = projected
        losses.append([trainer.train_step([collate(examples, 0)])["loss"] for _ in range(3)])
    assert losses[0][0] != losses[0][2]  # it trains
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert losses[0] == pytest.approx(losses[2], rel=1e-5)
