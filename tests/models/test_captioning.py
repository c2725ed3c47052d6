"""Captioners: Show, Attend and Tell and the Transformer captioner, on the shared decoding protocol."""
import pytest
import torch

from attnlab.data.batching import pad_to_tensor
from attnlab.data.images import scene_tensors, scenes_dataset
from attnlab.decoding import beam_search, greedy
from attnlab.models.captioning import (
    CaptionTransformer,
    CaptionTransformerConfig,
    SATConfig,
    ShowAttendTell,
)

PAD, BOS, EOS, V = 0, 1, 2, 20
ARCHS = {
    "sat": lambda **kw: ShowAttendTell(SATConfig.preset("test", vocab_size=V, **kw)),
    "sat-no-positions": lambda **kw: ShowAttendTell(SATConfig.preset("test", vocab_size=V, region_positions=False,
                                                                      **kw)),
    "vit": lambda **kw: CaptionTransformer(CaptionTransformerConfig.preset("test", vocab_size=V, **kw)),
    "cnn-transformer": lambda **kw: CaptionTransformer(CaptionTransformerConfig.preset("test", vocab_size=V,
                                                                                        encoder="cnn", **kw)),
}


def make(name: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return ARCHS[name](**kw).eval()


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return scene_tensors(scenes_dataset(n, seed=seed, size=32))


def captions() -> torch.Tensor:
    return torch.tensor([[BOS, 3, 4, 5, 6, EOS], [BOS, 7, 8, EOS, PAD, PAD], [BOS, 9, 10, 11, EOS, PAD]])


@pytest.mark.parametrize("name", ARCHS)
def test_attention_over_regions_sums_to_one(name):
    model = make(name)
    cross = model.attention_maps(images(), captions())["cross"]  # (L, B, H, T, R)
    h, w = model.grid_shape
    assert cross.shape[1] == 3 and cross.shape[3] == 6 and cross.shape[4] == h * w
    torch.testing.assert_close(cross.sum(-1), torch.ones(cross.shape[:-1]), atol=1e-5, rtol=0)
    assert float(cross.min()) >= 0.0


@pytest.mark.parametrize("name", ARCHS)
def test_cached_decoding_equals_recomputation_and_beam_one_equals_greedy(name):
    model = make(name)
    x = images(4)
    cached = greedy(model, x, max_len=8, bos_id=BOS, eos_id=EOS)
    replayed = greedy(model, x, max_len=8, bos_id=BOS, eos_id=EOS, use_cache=False)
    assert torch.equal(cached, replayed)
    beams = beam_search(model, x, beam_size=1, max_len=8, bos_id=BOS, eos_id=EOS)
    for row, hyps in zip(cached.tolist(), beams):
        assert hyps[0].tokens == (row[: row.index(EOS) + 1] if EOS in row else row)


@pytest.mark.parametrize("name", ARCHS)
def test_a_batch_equals_images_one_at_a_time(name):
    model = make(name)
    x = images(3)
    together = greedy(model, x, max_len=6, bos_id=BOS, eos_id=EOS)
    for i in range(3):
        alone = greedy(model, x[i:i + 1], max_len=6, bos_id=BOS, eos_id=EOS)
        assert alone[0].tolist() == together[i, : alone.size(1)].tolist()


@pytest.mark.parametrize("name", ARCHS)
def test_decode_step_weights_match_the_teacher_forced_maps(name):
    model = make(name)
    x, tgt = images(), captions()
    cross = model.attention_maps(x, tgt)["cross"]  # (L, B, H, T, R)
    state = model.init_decode(x, max_len=8)
    for t in range(1, 4):
        _, state, weights = model.decode_step(tgt[:, :t], state, need_weights=True)  # (B, L, H, R)
        torch.testing.assert_close(weights, cross[:, :, :, t - 1].permute(1, 0, 2, 3), atol=1e-5, rtol=1e-4)


def test_doubly_stochastic_penalty_is_the_papers_formula():
    model = make("sat", alpha_c=0.7)
    x, tgt = images(), captions()
    _, penalty = model.forward_with_aux(x, tgt)
    alphas = model.attention_maps(x, tgt)["cross"][0, :, 0]  # (B, T, R)
    real = (tgt != PAD).float()[:, :, None]
    expected = 0.7 * ((1 - (alphas * real).sum(1)) ** 2).sum()
    torch.testing.assert_close(penalty, expected)
    assert float(make("sat", alpha_c=0.0).forward_with_aux(x, tgt)[1].detach()) == 0.0


def test_gating_scalar_scales_the_context():
    model = make("sat")
    x, tgt = images(), captions()
    with torch.no_grad():
        model.gate.weight.zero_()
        model.gate.bias.fill_(-1e4)  # beta = 0: the words never see the image
    other = torch.roll(x, 1, dims=0)
    assert not torch.allclose(model(x, tgt), model(other, tgt))  # h_0, c_0 still see the image
    with torch.no_grad():
        model.init_h.weight.zero_()
        model.init_c.weight.zero_()
    torch.testing.assert_close(model(x, tgt), model(other, tgt))  # and nothing else does


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(2, 3, 16, 16), r"shape \(B, 3, 32, 32\)"),
    (torch.zeros(2, 1, 32, 32), r"shape \(B, 3, 32, 32\)"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "floating point"),
    ([[0.0]], "torch.Tensor"),
])
@pytest.mark.parametrize("name", ["sat", "vit"])
def test_bad_images_are_clear_errors(name, bad, message):
    with pytest.raises(ValueError, match=message):
        make(name)(bad, captions()[:2])


@pytest.mark.parametrize("name", ["sat", "vit"])
def test_bad_captions_are_clear_errors(name):
    model = make(name)
    with pytest.raises(ValueError, match="outside"):
        model(images(), torch.full((3, 4), V))
    with pytest.raises(ValueError, match="batch sizes differ"):
        model(images(), captions()[:2])


def test_config_errors():
    with pytest.raises(ValueError, match="power of two"):
        ShowAttendTell(SATConfig(vocab_size=V, image_size=48, grid_size=7))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        CaptionTransformer(CaptionTransformerConfig(vocab_size=V, image_size=30, patch_size=8))
    with pytest.raises(ValueError, match="divisible"):
        CaptionTransformerConfig(vocab_size=V, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="backbone"):
        SATConfig(vocab_size=V, backbone="vgg")


@pytest.mark.parametrize("name", ["sat", "vit"])
def test_autocast_bf16_eval_and_training_stay_finite(name):
    model = make(name)
    x, tgt = images(), captions()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = greedy(model, x, max_len=5, bos_id=BOS, eos_id=EOS)
        model.train()
        logits = model(x, tgt)
    assert out.shape[0] == 3 and torch.isfinite(logits.float()).all()
    logits.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["sat", "vit"])
def test_overfits_a_handful_of_images(name):
    """Eight scenes, each with its caption: a tiny captioner learns to say each one exactly."""
    from attnlab.data.word_vocab import WordVocab

    scenes = scenes_dataset(8, seed=3, size=32)
    vocab = WordVocab.build([s.caption for s in scenes])
    x = scene_tensors(scenes)
    rows = [[vocab.bos_id] + vocab.encode(s.caption) + [vocab.eos_id] for s in scenes]
    tgt = pad_to_tensor(rows, vocab.pad_id)
    torch.manual_seed(0)
    if name == "sat":
        model = ShowAttendTell(SATConfig.preset("test", vocab_size=vocab.vocab_size, d_hidden=64, d_embed=32))
    else:
        model = CaptionTransformer(CaptionTransformerConfig.preset("test", vocab_size=vocab.vocab_size, d_model=64,
                                                                   d_ff=128))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):
        logits = model(x, tgt[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt[:, 1:].reshape(-1),
                                                 ignore_index=vocab.pad_id)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.05, float(loss.detach())
    out = greedy(model, x, max_len=tgt.size(1), bos_id=vocab.bos_id, eos_id=vocab.eos_id)
    said = [vocab.decode([t for t in row if t != vocab.eos_id]) for row in out.tolist()]
    assert said == [s.caption for s in scenes]
