"""Whole-model parity: attnlab's Transformer against torch.nn.Transformer with the same weights.

The reference is built here from PyTorch's modules and the paper's formulas, written independently of
attnlab: nn.Embedding x sqrt(d_model) (section 3.4), the sinusoidal table PE(pos, 2i) = sin(pos / 10000^(2i/d)),
PE(pos, 2i+1) = cos(pos / 10000^(2i/d)) (section 3.5), nn.Transformer (post- or pre-norm), nn.Linear to the
vocabulary. Batches have padded sources and padded targets; logits are compared at the real target positions
only, and the gradients of every parameter of a loss over those positions, in float32.
"""
import math

import pytest
import torch
from torch import nn

from attnlab import Transformer, TransformerConfig

PAD = 0
D, HEADS, D_FF, LAYERS, SRC_V, TGT_V = 32, 4, 48, 2, 23, 29


def paper_positions(length: int, d_model: int) -> torch.Tensor:
    """Section 3.5, element by element in float64."""
    pe = torch.zeros(length, d_model, dtype=torch.float64)
    for pos in range(length):
        for i in range(d_model // 2):
            pe[pos, 2 * i] = math.sin(pos / 10000 ** (2 * i / d_model))
            pe[pos, 2 * i + 1] = math.cos(pos / 10000 ** (2 * i / d_model))
    return pe.float()


class Reference(nn.Module):
    def __init__(self, norm_first: bool, tie_output: bool):
        super().__init__()
        self.src_embedding = nn.Embedding(SRC_V, D)
        self.tgt_embedding = nn.Embedding(TGT_V, D)
        self.register_buffer("pe", paper_positions(64, D))

        def encoder_layer():
            return nn.TransformerEncoderLayer(D, HEADS, D_FF, dropout=0.0, batch_first=True, norm_first=norm_first)

        def decoder_layer():
            return nn.TransformerDecoderLayer(D, HEADS, D_FF, dropout=0.0, batch_first=True, norm_first=norm_first)

        # post-norm (the paper) ends each stack with the last layer's norm; pre-norm adds a final LayerNorm
        self.transformer = nn.Transformer(
            D, HEADS, batch_first=True, dropout=0.0,
            custom_encoder=nn.TransformerEncoder(encoder_layer(), LAYERS, norm=nn.LayerNorm(D) if norm_first else None,
                                                 enable_nested_tensor=False),
            custom_decoder=nn.TransformerDecoder(decoder_layer(), LAYERS, norm=nn.LayerNorm(D) if norm_first else None))
        self.output = nn.Linear(D, TGT_V, bias=False)
        if tie_output:
            self.output.weight = self.tgt_embedding.weight

    def forward(self, src, tgt):
        x = self.src_embedding(src) * math.sqrt(D) + self.pe[: src.size(1)]
        y = self.tgt_embedding(tgt) * math.sqrt(D) + self.pe[: tgt.size(1)]
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.size(1)).isinf()  # True = may NOT attend
        h = self.transformer(x, y, tgt_mask=causal, src_key_padding_mask=src == PAD,
                             tgt_key_padding_mask=tgt == PAD, memory_key_padding_mask=src == PAD)
        return self.output(h)


def weight_pairs(ours: Transformer, ref: Reference, norm_first: bool) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """(attnlab parameter, reference parameter) for every parameter of both models."""
    pairs = [(ours.input_embedding.weight, ref.src_embedding.weight),
             (ours.output_embedding.weight, ref.tgt_embedding.weight)]
    if not ours.cfg.tie_output:
        pairs.append((ours.output_projection.weight, ref.output.weight))

    def attention(a, r):
        return [(a.in_proj.weight, r.in_proj_weight), (a.in_proj.bias, r.in_proj_bias),
                (a.out_proj.weight, r.out_proj.weight), (a.out_proj.bias, r.out_proj.bias)]

    def ffn_norms(a, r, norms):
        out = [(a.ffn.linear1.weight, r.linear1.weight), (a.ffn.linear1.bias, r.linear1.bias),
               (a.ffn.linear2.weight, r.linear2.weight), (a.ffn.linear2.bias, r.linear2.bias)]
        for i in norms:
            ours_norm, ref_norm = getattr(a, f"add_norm{i}").norm, getattr(r, f"norm{i}")
            out += [(ours_norm.weight, ref_norm.weight), (ours_norm.bias, ref_norm.bias)]
        return out

    for a, r in zip(ours.encoder.layers, ref.transformer.encoder.layers):
        pairs += attention(a.self_attn, r.self_attn) + ffn_norms(a, r, (1, 2))
    for a, r in zip(ours.decoder.layers, ref.transformer.decoder.layers):
        pairs += attention(a.self_attn, r.self_attn) + attention(a.cross_attn, r.multihead_attn)
        pairs += ffn_norms(a, r, (1, 2, 3))
    if norm_first:
        for a, r in ((ours.encoder.final_norm, ref.transformer.encoder.norm),
                     (ours.decoder.final_norm, ref.transformer.decoder.norm)):
            pairs += [(a.weight, r.weight), (a.bias, r.bias)]
    return pairs


def models(norm_first: bool, tie_output: bool) -> tuple[Transformer, Reference, list]:
    torch.manual_seed(0)
    ours = Transformer(TransformerConfig(src_vocab_size=SRC_V, tgt_vocab_size=TGT_V, d_model=D, n_heads=HEADS,
                                         n_layers=LAYERS, d_ff=D_FF, dropout=0.0, norm_first=norm_first,
                                         tie_output=tie_output, pad_id=PAD))
    ref = Reference(norm_first, tie_output)
    pairs = weight_pairs(ours, ref, norm_first)
    # every parameter is mapped, once: nothing of either model is left at its own initialisation
    assert len({id(a) for a, _ in pairs}) == len(list(ours.parameters()))
    assert len({id(r) for _, r in pairs}) == len(list(ref.parameters()))
    with torch.no_grad():
        for a, r in pairs:  # random weights (biases and norms too), so that no term is trivially zero
            a.normal_(0, 0.3)
            r.copy_(a)
    return ours.train(), ref.train(), pairs  # dropout 0: training mode takes the training kernels


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(1, SRC_V, (4, 9), generator=g)
    tgt = torch.randint(1, TGT_V, (4, 7), generator=g)
    for i, (s, t) in enumerate([(9, 7), (5, 3), (2, 6), (7, 1)]):  # padding on either side, not in the same rows
        src[i, s:] = PAD
        tgt[i, t:] = PAD
    return src, tgt


@pytest.mark.parametrize("norm_first,tie_output", [(False, True), (False, False), (True, True)])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_logits_and_gradients_equal_nn_transformer(norm_first, tie_output, packed):
    ours, ref, pairs = models(norm_first, tie_output)
    src, tgt = padded_batch()
    real = tgt != PAD
    ref_logits = ref(src, tgt)[real]  # (N, V) at the real target positions
    logits = ours(src, tgt, positions=real) if packed else ours(src, tgt)[real]
    scale = float(ref_logits.detach().abs().max())
    assert scale > 1.0  # the random weights give logits of size, not a collapsed output
    torch.testing.assert_close(logits / scale, ref_logits / scale, atol=2e-6, rtol=0)

    weights = torch.randn(ref_logits.shape, generator=torch.Generator().manual_seed(2))
    (logits * weights).sum().backward()
    (ref_logits * weights).sum().backward()
    for a, r in pairs:
        assert a.grad is not None and r.grad is not None
        g_scale = float(r.grad.abs().max())
        if g_scale == 0.0:  # the pad row of an embedding
            continue
        torch.testing.assert_close(a.grad / g_scale, r.grad / g_scale, atol=2e-5, rtol=0)
    # the pad embeddings get no gradient on either side
    assert float(ours.input_embedding.weight.grad[PAD].abs().max()) == 0.0
