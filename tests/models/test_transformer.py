"""The Transformer: parity with torch.nn layers, causality, padding, positions, bad input, overfitting."""
import pytest
import torch
from torch import nn

from attnlab import Transformer, TransformerConfig
from attnlab.config import TRANSFORMER_PRESETS
from attnlab.models.transformer import DecoderLayer, EncoderLayer


def small_config(**kw):
    values = dict(src_vocab_size=40, tgt_vocab_size=50, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0)
    values.update(kw)
    return TransformerConfig(**values)


def copy_attention(ours, ref):
    ref.in_proj_weight.copy_(ours.in_proj.weight)
    ref.in_proj_bias.copy_(ours.in_proj.bias)
    ref.out_proj.weight.copy_(ours.out_proj.weight)
    ref.out_proj.bias.copy_(ours.out_proj.bias)


def copy_linear_norm(ours_ffn, ref, norms):
    ref.linear1.load_state_dict(ours_ffn.linear1.state_dict())
    ref.linear2.load_state_dict(ours_ffn.linear2.state_dict())
    for ours_norm, ref_norm in norms:
        ref_norm.load_state_dict(ours_norm.norm.state_dict())


def randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_matches_torch(norm_first):
    torch.manual_seed(0)
    cfg = small_config(norm_first=norm_first)
    ours = EncoderLayer(cfg).eval()
    randomize(ours)
    ref = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    with torch.no_grad():
        copy_attention(ours.self_attn, ref.self_attn)
        copy_linear_norm(ours.ffn, ref, [(ours.add_norm1, ref.norm1), (ours.add_norm2, ref.norm2)])
    x = torch.randn(3, 6, 32)
    keep = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], dtype=torch.bool)
    out, _ = ours(x, keep[:, None, None, :])
    with torch.no_grad():
        ref_out = ref(x, src_key_padding_mask=~keep)
    torch.testing.assert_close(out[keep], ref_out[keep], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_torch(norm_first):
    torch.manual_seed(1)
    cfg = small_config(norm_first=norm_first)
    ours = DecoderLayer(cfg).eval()
    randomize(ours)
    ref = nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    with torch.no_grad():
        copy_attention(ours.self_attn, ref.self_attn)
        copy_attention(ours.cross_attn, ref.multihead_attn)
        copy_linear_norm(
            ours.ffn, ref,
            [(ours.add_norm1, ref.norm1), (ours.add_norm2, ref.norm2), (ours.add_norm3, ref.norm3)],
        )
    x, memory = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    src_keep = torch.ones(2, 7, dtype=torch.bool)
    src_keep[1, 5:] = False
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    out, _, _ = ours(x, memory, src_keep[:, None, None, :], causal)
    with torch.no_grad():
        ref_out = ref(x, memory, tgt_mask=~causal, memory_key_padding_mask=~src_keep)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)


def test_named_modules_follow_the_paper():
    model = Transformer(small_config())
    names = dict(model.named_modules())
    for name in [
        "input_embedding", "src_positions", "encoder.layers.0.self_attn", "encoder.layers.0.add_norm1",
        "encoder.layers.0.ffn", "encoder.layers.0.add_norm2", "output_embedding", "tgt_positions",
        "decoder.layers.1.self_attn", "decoder.layers.1.add_norm1", "decoder.layers.1.cross_attn",
        "decoder.layers.1.add_norm2", "decoder.layers.1.ffn", "decoder.layers.1.add_norm3", "output_projection",
    ]:
        assert name in names, name
    assert len(model.encoder.layers) == 2 and len(model.decoder.layers) == 2


def test_tied_and_shared_embeddings():
    tied = Transformer(small_config(tie_output=True))
    assert tied.output_projection.weight is tied.output_embedding.weight
    shared = Transformer(small_config(tgt_vocab_size=40, share_embeddings=True))
    assert shared.input_embedding is shared.output_embedding
    untied = Transformer(small_config(tie_output=False))
    assert untied.output_projection.weight is not untied.output_embedding.weight


def test_presets_have_the_paper_sizes():
    base = TransformerConfig.preset("base", src_vocab_size=37000, tgt_vocab_size=37000, share_embeddings=True)
    assert (base.d_model, base.n_heads, base.n_layers, base.d_ff, base.dropout) == (512, 8, 6, 2048, 0.1)
    big = TransformerConfig.preset("big")
    assert (big.d_model, big.n_heads, big.d_ff, big.dropout) == (1024, 16, 4096, 0.3)
    # Table 3 reports 65M parameters for base (shared 37k BPE vocabulary, tied output)
    n = Transformer(base).num_parameters()
    assert 60e6 < n < 66e6, n
    assert {"small", "tiny"} <= set(TRANSFORMER_PRESETS)


@pytest.mark.parametrize("norm_first", [False, True])
def test_causality_future_targets_change_no_earlier_logit(norm_first):
    torch.manual_seed(2)
    model = Transformer(small_config(norm_first=norm_first)).eval()
    src = torch.randint(1, 40, (2, 6))
    tgt = torch.randint(1, 50, (2, 8))
    logits = model(src, tgt)
    for t in range(7):
        changed = tgt.clone()
        changed[:, t + 1:] = torch.randint(1, 50, changed[:, t + 1:].shape)
        other = model(src, changed)
        torch.testing.assert_close(other[:, : t + 1], logits[:, : t + 1], atol=1e-5, rtol=1e-5)
        if t < 6:
            assert not torch.allclose(other[:, t + 1:], logits[:, t + 1:])


def test_padding_source_or_target_changes_no_real_logit():
    torch.manual_seed(3)
    model = Transformer(small_config()).eval()
    src = torch.randint(1, 40, (2, 5))
    tgt = torch.randint(1, 50, (2, 4))
    logits = model(src, tgt)
    padded_src = torch.cat([src, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    padded_tgt = torch.cat([tgt, torch.zeros(2, 2, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded_src, tgt), logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(src, padded_tgt)[:, :4], logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(padded_src, padded_tgt)[:, :4], logits, atol=1e-5, rtol=1e-5)


def test_fully_padded_source_gives_finite_logits_and_gradients():
    model = Transformer(small_config())
    src = torch.tensor([[5, 6, 0], [0, 0, 0]])
    tgt = torch.tensor([[1, 7, 8], [1, 9, 0]])
    logits = model(src, tgt)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_without_positions_encoder_is_permutation_equivariant():
    torch.manual_seed(4)
    src = torch.randint(1, 40, (1, 7))
    perm = torch.randperm(7)
    plain = Transformer(small_config(positional="none")).eval()
    torch.testing.assert_close(plain.encode(src)[:, perm], plain.encode(src[:, perm]), atol=1e-5, rtol=1e-5)
    positional = Transformer(small_config()).eval()
    assert not torch.allclose(positional.encode(src)[:, perm], positional.encode(src[:, perm]), atol=1e-3)


def test_output_probabilities_are_a_distribution():
    model = Transformer(small_config()).eval()
    probs = model.output_probabilities(torch.randint(1, 40, (2, 5)), torch.randint(1, 50, (2, 3)))
    assert probs.shape == (2, 3, 50)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3))


def test_attention_maps_shapes_and_normalisation():
    model = Transformer(small_config()).eval()
    src = torch.tensor([[5, 6, 7, 0]])
    maps = model.attention_maps(src, torch.tensor([[1, 8, 9]]))
    assert maps["encoder"].shape == (2, 1, 4, 4, 4)
    assert maps["cross"].shape == (2, 1, 4, 3, 4)
    torch.testing.assert_close(maps["cross"].sum(-1), torch.ones(2, 1, 4, 3))
    assert float(maps["cross"][..., 3].abs().max()) == 0.0  # no weight on the padded source position


@pytest.mark.parametrize(
    "src, message",
    [
        (torch.randint(1, 40, (2, 5)).float(), "integer token ids"),
        (torch.randint(1, 40, (10,)), "2-D"),
        (torch.full((2, 5), 40), "outside"),
        (torch.full((2, 5), -1), "outside"),
        (torch.zeros(2, 0, dtype=torch.long), "empty"),
    ],
)
def test_bad_input_is_a_clear_value_error(src, message):
    model = Transformer(small_config())
    with pytest.raises(ValueError, match=message):
        model(src, torch.ones(2, 3, dtype=torch.long))


def test_bad_config_is_a_clear_value_error():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        small_config(d_model=30)
    with pytest.raises(ValueError, match="one vocabulary"):
        small_config(share_embeddings=True)
    with pytest.raises(ValueError, match="unknown preset"):
        TransformerConfig.preset("huge")
    with pytest.raises(ValueError, match="batch sizes differ"):
        Transformer(small_config())(torch.ones(2, 3, dtype=torch.long), torch.ones(3, 3, dtype=torch.long))


def test_config_round_trips_through_dict():
    cfg = small_config(norm_first=True, positional="learned")
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown TransformerConfig fields"):
        TransformerConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_zero_start_embedding_is_marians_start_and_stays_zero_through_training():
    """zero_start_id (Marian's decoder start, what CTranslate2 computes): <s> embeds to the zero vector, so
    the first decoder input is the position encoding alone; Adam with weight decay leaves the row at
    exactly zero although the tied output projection and the shared source embedding use it too."""
    bos = 1
    torch.manual_seed(0)
    model = Transformer(small_config(share_embeddings=True, src_vocab_size=11, tgt_vocab_size=11, zero_start_id=bos))
    assert torch.equal(model.embed_tgt(torch.tensor([[bos]])), model.tgt_positions(torch.zeros(1, 1, 32)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        src, tgt = torch.randint(2, 11, (4, 5)), torch.randint(2, 11, (4, 6))
        tgt[:, 0] = bos
        loss = nn.functional.cross_entropy(model(src, tgt[:, :-1]).flatten(0, 1), tgt[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weight = model.output_embedding.weight
    assert weight[bos].abs().max() == 0 and weight[2].abs().min() > 0  # the others learn
    # a config saved before the option (no key) keeps the learned <s>
    old = {k: v for k, v in model.cfg.to_dict().items() if k != "zero_start_id"}
    assert TransformerConfig.from_dict(old).zero_start_id is None
    assert Transformer(TransformerConfig.from_dict(old)).output_embedding.weight[bos].abs().max() > 0
    with pytest.raises(ValueError, match="zero_start_id 50 is outside"):
        small_config(zero_start_id=50)
