"""Dynamic int8 quantisation for CPU inference: what it converts, and that a trained model keeps its outputs."""
import pytest
import torch
import torch.nn.functional as F

from attnlab import Transformer, TransformerConfig
from attnlab.decoding import beam_search, greedy
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


def test_converts_every_linear_but_the_sliced_input_projection():
    model = copy_model(steps=0)
    names = quantizable_linears(model)
    assert "output_projection" in names and "encoder.layers.0.ffn.linear1" in names
    assert "decoder.layers.1.cross_attn.out_proj" in names
    assert not any(n.endswith("in_proj") for n in names)
    q = quantize_int8(model)
    kinds = {type(m).__name__ for n, m in q.named_modules() if n in names}
    assert kinds == {"Linear"} and all("quantized" in type(m).__module__ for n, m in q.named_modules() if n in names)
    assert type(model.output_projection) is torch.nn.Linear  # the original is left alone


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
    logits, logits_q = model(src, expected), q(src, expected)
    rel = float((logits - logits_q).norm() / logits.norm())
    assert rel < 0.05, rel
    beams_fp32 = beam_search(model, src[:8], beam_size=3, max_len=10, bos_id=BOS, eos_id=EOS)
    beams_int8 = beam_search(q, src[:8], beam_size=3, max_len=10, bos_id=BOS, eos_id=EOS)
    same = sum(a[0].tokens == b[0].tokens for a, b in zip(beams_fp32, beams_int8))
    assert same >= 7, same


def test_refuses_a_model_on_another_device_or_without_linears():
    with pytest.raises(ValueError, match="no linear layer"):
        quantize_int8(torch.nn.Sequential(torch.nn.ReLU()))
