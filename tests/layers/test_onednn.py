"""Decoding's CPU linear layers through oneDNN (attnlab.layers.onednn): same function as F.linear,
refreshed when the weights change, never used where gradients, autocast or export need F.linear."""
import pytest
import torch
import torch.nn.functional as F

import attnlab.layers.onednn as onednn
from attnlab.decoding import beam_search, greedy
from attnlab.decoding.greedy import fast_argmax
from attnlab.layers.onednn import fast_decoding, linear

pytestmark = pytest.mark.skipif(not onednn._state["available"], reason="this PyTorch build has no oneDNN (mkldnn)")


@pytest.fixture(autouse=True)
def fresh_row_budget(monkeypatch):
    monkeypatch.setattr(onednn, "_row_counts", set())


def test_only_a_bounded_number_of_row_counts_take_the_onednn_path(monkeypatch):
    monkeypatch.setattr(onednn, "MAX_ROW_COUNTS", 2)
    layer = torch.nn.Linear(8, 8)
    with torch.no_grad(), fast_decoding():
        for rows in (3, 4, 5, 3):
            torch.testing.assert_close(linear(layer, torch.ones(rows, 8)), F.linear(torch.ones(rows, 8), layer.weight, layer.bias))
    assert onednn._row_counts == {3, 4}  # 5 went through F.linear


def test_linear_equals_f_linear_with_rows_and_relu():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 24)
    x = torch.randn(5, 3, 16)
    with torch.no_grad(), fast_decoding():
        torch.testing.assert_close(linear(layer, x), F.linear(x, layer.weight, layer.bias))
        torch.testing.assert_close(linear(layer, x, relu=True), F.relu(F.linear(x, layer.weight, layer.bias)))
        torch.testing.assert_close(linear(layer, x, rows=slice(8, 24)),
                                   F.linear(x, layer.weight[8:], layer.bias[8:]))
    assert layer in onednn._PACKED  # the packed weights were used and kept


def test_packed_weights_follow_in_place_updates():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with torch.no_grad(), fast_decoding():
        before = linear(layer, x)
        layer.weight.mul_(2.0)  # an optimizer step or load_state_dict writes in place like this
        after = linear(layer, x)
    torch.testing.assert_close(after, F.linear(x, layer.weight, layer.bias))
    assert not torch.allclose(before, after)


def test_plain_f_linear_outside_decoding_and_under_autograd():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    onednn._PACKED.pop(layer, None)
    with fast_decoding():
        y = linear(layer, x)  # gradients wanted: F.linear
    y.sum().backward()
    assert x.grad is not None and layer not in onednn._PACKED
    with torch.no_grad():
        linear(layer, x)  # not decoding
    assert layer not in onednn._PACKED


def test_decoding_gives_the_same_tokens_with_and_without_onednn(monkeypatch):
    from attnlab import Transformer, TransformerConfig

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=50, tgt_vocab_size=50, d_model=32, n_heads=4, n_layers=2,
                                          d_ff=64, dropout=0.0)).eval()
    src = torch.randint(3, 50, (6, 9))
    src[1, 4:] = 0
    onednn._PACKED.clear()
    fast = greedy(model, src, max_len=12, bos_id=1, eos_id=2), beam_search(model, src, 3, 12, 1, 2)
    assert model.decoder.layers[0].ffn.linear1 in onednn._PACKED  # the decoder step took the oneDNN path
    monkeypatch.setitem(onednn._state, "available", False)
    plain = greedy(model, src, max_len=12, bos_id=1, eos_id=2), beam_search(model, src, 3, 12, 1, 2)
    assert torch.equal(fast[0], plain[0])
    assert [[h.tokens for h in hyps] for hyps in fast[1]] == [[h.tokens for h in hyps] for hyps in plain[1]]


@pytest.mark.parametrize("vocab", [1, 63, 64, 65, 130, 8000, 7962])
def test_fast_argmax_is_argmax(vocab):
    g = torch.Generator().manual_seed(vocab)
    for trial in range(12):
        x = torch.randn(9, vocab, generator=g)
        if trial % 3 == 0:
            x = x.round()  # ties: the first maximum wins, as in argmax
        if trial % 4 == 1:
            x[:, ::3] = float("-inf")
        assert torch.equal(fast_argmax(x), x.argmax(dim=-1))


def test_decoding_after_a_fused_adam_step_uses_the_new_weights(monkeypatch):
    """Adam(fused=True) writes parameters without bumping their version counter: the packed weights
    must still be refreshed at the next decode (a validation decode between training steps)."""
    from attnlab import Transformer, TransformerConfig

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=50, tgt_vocab_size=50, d_model=32, n_heads=4, n_layers=2,
                                          d_ff=64, dropout=0.0)).eval()
    src = torch.randint(3, 50, (4, 7))
    prefix = torch.randint(3, 50, (4, 3))

    def step_logits():
        with torch.no_grad():
            state = model.init_decode(src, max_len=8)
            for t in range(1, prefix.size(1) + 1):
                logits, state, _ = model.decode_step(prefix[:, :t], state)
        return logits

    step_logits()  # packs the weights
    versions = [p._version for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=0.05, fused=True)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    assert [p._version for p in model.parameters()] == versions  # the case the checksum is for
    fast = step_logits()
    monkeypatch.setitem(onednn._state, "available", False)
    plain = step_logits()
    torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-4)
