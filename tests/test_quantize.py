"""Dynamic int8 quantisation for CPU inference: what it converts, and that a trained model keeps its outputs."""
import copy

import pytest
import torch
import torch.nn.functional as F

from attnlab import Transformer, TransformerConfig
from attnlab.decoding import beam_search, greedy
from attnlab.layers.int8 import Int8Linear
from attnlab.quantize import quantizable_linears, quantize_int8

PAD, BOS, EOS = 0, 1, 2


def copy_model(steps: int = 250) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=31, tgt_vocab_size=31, d_model=64, n_heads=4, n_layers=2,
                                          d_ff=128, dropout=0.0, share_embeddings=True))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x = torch.randint(3, 31, (32, int(torch.randint(2, 8, ()))))
        src = torch.cat([x, torch.full((32, 1), EOS)], dim=1)
        tgt = torch.cat([torch.full((32, 1), BOS), x, torch.full((32, 1), EOS)], dim=1)
        loss = F.cross_entropy(model(src, tgt[:, :-1]).flatten(0, 1), tgt[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_converts_every_linear_including_the_stacked_input_projections():
    model = copy_model(steps=0)
    names = quantizable_linears(model)
    assert "output_projection" in names and "encoder.layers.0.ffn.linear1" in names
    assert "decoder.layers.1.cross_attn.out_proj" in names and "decoder.layers.1.cross_attn.in_proj" in names
    assert len(names) == 2 * 4 + 2 * 6 + 1  # encoder layers: in/out proj, ffn x2; decoder: + cross in/out; output
    q = quantize_int8(model)
    assert {type(m) for n, m in q.named_modules() if n in names} == {Int8Linear}
    assert type(model.output_projection) is torch.nn.Linear  # the original is left alone
    assert q.output_embedding.weight.dtype == torch.float32  # the shared embedding stays float


def test_int8_linear_is_the_dequantised_weight_up_to_activation_rounding():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    q = Int8Linear(lin)
    w = q.dequantized_weight()
    # per-row scales: every row's largest weight is exact, every weight within half a step
    step = lin.weight.detach().abs().amax(dim=1, keepdim=True) / 127
    assert float(((w - lin.weight.detach()).abs() / step).max()) <= 0.5 + 1e-4
    x = torch.randn(5, 7, 64)
    y = q(x)
    assert y.shape == (5, 7, 96) and y.dtype == torch.float32
    expected = F.linear(x, w, lin.bias.detach())
    rel = float((y - expected).norm() / expected.norm())
    assert rel < 0.02, rel  # 7-bit activations
    assert float((q(x, relu=True) - y.relu()).abs().max()) < 1e-5  # fused ReLU


def test_int8_row_blocks_are_the_rows_of_the_whole():
    torch.manual_seed(1)
    q = Int8Linear(torch.nn.Linear(32, 96))
    x = torch.randn(11, 32)
    whole = q(x)
    for rows in (slice(0, 32), slice(32, 96)):
        torch.testing.assert_close(q(x, rows=rows), whole[:, rows], rtol=1e-6, atol=1e-6)
    assert q(x[:0], rows=slice(32, 96)).shape == (0, 64)
    assert torch.equal(copy.deepcopy(q)(x), whole)  # a copy of a used layer packs its own blocks


def test_quantised_attention_projects_like_the_float_one_with_int8_weights():
    model = copy_model(steps=0)
    q = quantize_int8(model)
    attn = q.decoder.layers[0].cross_attn
    memory = torch.randn(3, 5, 64)
    k, v = attn.project_kv(memory)
    w = attn.in_proj.dequantized_weight()[64:]
    kv = F.linear(memory, w, attn.in_proj.bias[64:])
    rel = float((torch.cat([k.transpose(1, 2).flatten(2), v.transpose(1, 2).flatten(2)], -1) - kv).norm() / kv.norm())
    assert rel < 0.02, rel


def test_a_trained_model_translates_the_same_after_quantisation():
    model = copy_model()
    q = quantize_int8(model)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(3, 31, (64, 6), generator=g)
    src = torch.cat([x, torch.full((64, 1), EOS)], dim=1)
    expected = torch.cat([x, torch.full((64, 1), EOS)], dim=1)
    fp32 = greedy(model, src, max_len=10, bos_id=BOS, eos_id=EOS)
    int8 = greedy(q, src, max_len=10, bos_id=BOS, eos_id=EOS)
    assert float((fp32[:, :7] == expected).float().mean()) > 0.9  # the model has learnt the task
    assert float((int8[:, :7] == fp32[:, :7]).float().mean()) > 0.97
    with torch.no_grad():
        logits, logits_q = model(src, expected), q(src, expected)
    rel = float((logits - logits_q).norm() / logits.norm())
    assert rel < 0.05, rel  # measured 0.037
    beams_fp32 = beam_search(model, src[:8], beam_size=3, max_len=10, bos_id=BOS, eos_id=EOS)
    beams_int8 = beam_search(q, src[:8], beam_size=3, max_len=10, bos_id=BOS, eos_id=EOS)
    same = sum(a[0].tokens == b[0].tokens for a, b in zip(beams_fp32, beams_int8))
    assert same >= 7, same


def test_refuses_a_model_on_another_device_or_without_linears():
    with pytest.raises(ValueError, match="no linear layer"):
        quantize_int8(torch.nn.Sequential(torch.nn.ReLU()))
