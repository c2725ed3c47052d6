"""The lean cached decoder step (attnlab.models.transformer_step): the same logits as the modules' path, step
by step, for every variant of the model it serves; the cases it leaves to the modules; cache growth, beam
groups and oneDNN's row-count limit."""

import pytest
import torch
from torch import nn

from attnlab import Transformer, TransformerConfig
from attnlab.decoding import beam_search, greedy
from attnlab.layers import decode_kernel, onednn
from attnlab.models import transformer_step
from attnlab.quantize import quantize_int8
from required import needs_kernel

BOS, EOS, PAD = 1, 2, 0
pytestmark = needs_kernel  # a C compiler: skips without one, fails in CI (required.py)


def model_and_sources(**kw):
    torch.manual_seed(0)
    values = dict(src_vocab_size=40, tgt_vocab_size=45, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.1)
    values.update(kw)
    model = Transformer(TransformerConfig(**values)).eval()
    with torch.no_grad():  # peaked, so that the outputs vary by source and step
        for p in model.parameters():
            p.mul_(2.5)
    src = torch.randint(3, 40, (6, 11))
    src[1, 4:] = PAD
    src[3, 1:] = PAD
    return model, src


def stepwise_logits(model, src, steps, lean, monkeypatch, max_len=None):
    """Logits of `steps` cached decoder steps fed the same (random) prefixes, lean step on or off."""
    monkeypatch.setattr(transformer_step, "applies", real_applies if lean else (lambda *a: False))
    torch.manual_seed(5)
    prefixes = torch.randint(3, model.cfg.tgt_vocab_size, (src.size(0), steps))
    prefixes[:, 0] = BOS
    with torch.no_grad():
        state = model.init_decode(src, max_len=max_len or steps)
        out = [model.decode_step(prefixes[:, : t + 1], state)[0] for t in range(steps)]
    return torch.stack(out), state


real_applies = transformer_step.applies


@pytest.mark.parametrize("variant", [
    {}, {"norm_first": True}, {"activation": "gelu"}, {"bias": False}, {"positional": "learned"},
    {"share_embeddings": True, "tgt_vocab_size": 40}, {"n_heads": 8, "d_model": 24, "d_ff": 40},
    {"zero_start_id": BOS},  # Marian's start (the <s> row held at zero): only weights differ, the step is one
])
def test_lean_step_gives_the_logits_of_the_modules_path(variant, monkeypatch):
    model, src = model_and_sources(**variant)
    served = []
    monkeypatch.setattr(transformer_step, "step", lambda *a, _real=transformer_step.step: served.append(1) or _real(*a))
    lean, state = stepwise_logits(model, src, 7, True, monkeypatch)
    assert len(served) == 7 and state.step_plan  # every step took the lean path
    modules, _ = stepwise_logits(model, src, 7, False, monkeypatch)
    assert len(served) == 7
    scale = modules.abs().max()
    torch.testing.assert_close(lean / scale, modules / scale, atol=1e-5, rtol=0)


def test_greedy_and_beam_search_give_the_same_tokens_and_the_cache_grows(monkeypatch):
    model, src = model_and_sources()
    # max_len beyond the cache's initial capacity: greedy asks for max_len + 1 positions, beam search too
    monkeypatch.setattr(transformer_step, "applies", lambda *a: False)
    slow_greedy = greedy(model, src, max_len=20, bos_id=BOS, eos_id=EOS)
    slow_beam = beam_search(model, src, beam_size=3, max_len=20, bos_id=BOS, eos_id=EOS)
    monkeypatch.setattr(transformer_step, "applies", real_applies)
    assert torch.equal(greedy(model, src, max_len=20, bos_id=BOS, eos_id=EOS), slow_greedy)
    fast_beam = beam_search(model, src, beam_size=3, max_len=20, bos_id=BOS, eos_id=EOS)
    assert [[h.tokens for h in row] for row in fast_beam] == [[h.tokens for h in row] for row in slow_beam]
    lean, state = stepwise_logits(model, src, 9, True, monkeypatch, max_len=2)  # grows 2 -> 4 -> 8 -> 16
    assert state.caches[0].capacity >= 9 and state.caches[0].length == 9
    modules, _ = stepwise_logits(model, src, 9, False, monkeypatch, max_len=2)
    torch.testing.assert_close(lean / modules.abs().max(), modules / modules.abs().max(), atol=1e-5, rtol=0)


def test_int8_models_and_row_counts_beyond_onednns_limit_keep_their_own_kernels(monkeypatch):
    model, src = model_and_sources()
    q = quantize_int8(model)
    lean, state = stepwise_logits(q, src, 5, True, monkeypatch)
    assert state.step_plan
    modules, _ = stepwise_logits(q, src, 5, False, monkeypatch)
    torch.testing.assert_close(lean / modules.abs().max(), modules / modules.abs().max(), atol=1e-5, rtol=0)
    # oneDNN keeps a kernel per row count: past MAX_ROW_COUNTS new counts take F.linear, with the same result
    monkeypatch.setattr(onednn, "_row_counts", set(range(1000, 1000 + onednn.MAX_ROW_COUNTS)))
    full, _ = stepwise_logits(model, src, 5, True, monkeypatch)
    assert src.size(0) not in onednn._row_counts
    monkeypatch.setattr(onednn, "_row_counts", set())
    packed, _ = stepwise_logits(model, src, 5, True, monkeypatch)
    torch.testing.assert_close(full / packed.abs().max(), packed / packed.abs().max(), atol=1e-5, rtol=0)


class OtherNorm(nn.LayerNorm):
    pass


def test_the_modules_path_serves_what_the_lean_step_does_not(monkeypatch):
    model, src = model_and_sources()
    with torch.no_grad():
        state = model.init_decode(src, max_len=4)
        tokens = torch.full((src.size(0), 1), BOS)
        assert real_applies(model, state, False)
        assert not real_applies(model, state, True)  # attention pictures: the modules return the weights
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not real_applies(model, state, False)
    assert not real_applies(model, state, False)  # gradients on
    model.train()
    with torch.no_grad():
        assert not real_applies(model, state, False)
    model.eval()
    left = torch.full_like(src, PAD)
    left[:, 2:] = src[:, :9]  # padding first: the source keys are not a prefix of each row
    with torch.no_grad():
        assert not real_applies(model, model.init_decode(left, max_len=4), False)
        assert not real_applies(model, model.init_decode(src, max_len=4, use_cache=False), False)
        monkeypatch.setattr(decode_kernel.KERNELS, "state", {"fns": None})  # no C compiler
        assert not real_applies(model, model.init_decode(src, max_len=4), False)
        monkeypatch.undo()
        model.decoder.layers[1].add_norm2.norm.__class__ = OtherNorm  # a layer of the user's own
        state = model.init_decode(src, max_len=4)
        assert not real_applies(model, state, False) and state.step_plan is False
        logits, _, _ = model.decode_step(tokens, state)  # the modules' path
        assert logits.shape == (src.size(0), model.cfg.tgt_vocab_size) and torch.isfinite(logits).all()


def test_the_transformer_captioner_decodes_through_the_lean_step_too(monkeypatch):
    from attnlab.models.captioning import CaptionTransformer, CaptionTransformerConfig

    torch.manual_seed(0)
    model = CaptionTransformer(CaptionTransformerConfig.preset("test", vocab_size=30)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.5)
    images = torch.randn(3, 3, 32, 32)
    served = []
    monkeypatch.setattr(transformer_step, "step", lambda *a, _real=transformer_step.step: served.append(1) or _real(*a))
    fast = greedy(model, images, max_len=8, bos_id=BOS, eos_id=EOS, min_len=8)
    assert len(served) == 8
    monkeypatch.setattr(transformer_step, "applies", lambda *a: False)
    assert torch.equal(fast, greedy(model, images, max_len=8, bos_id=BOS, eos_id=EOS, min_len=8))
