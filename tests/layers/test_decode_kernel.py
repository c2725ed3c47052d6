"""The decoding kernels (attnlab.layers.decode_kernel): attention, attention over the KV cache and add & norm,
the same functions as PyTorch's in float64, used by the cached decoder step, and a clean fallback where they
cannot be compiled."""
import shutil
import warnings

import pytest
import torch

from attnlab import Transformer, TransformerConfig
from attnlab.decoding import beam_search, greedy
from attnlab.layers import cpu_kernels, decode_kernel
from attnlab.models import transformer_step
from attnlab.models.transformer import prefix_lengths
from required import needs_kernel

BOS, EOS, PAD = 1, 2, 0


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """Load the kernel anew, compiled into an empty cache directory."""
    monkeypatch.setenv("ATTNLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(decode_kernel.KERNELS, "state", {})
    return tmp_path


def reference(q, k, v, lengths):
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) / q.size(-1) ** 0.5  # (B, H, T, S)
    keep = torch.arange(k.size(2))[None] < lengths[:, None]  # (B, S)
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    weights = torch.nan_to_num(scores.softmax(-1), nan=0.0)  # a row without keys: zeros
    out = weights @ v  # (B, H, T, D)
    return out.transpose(1, 2).reshape(q.size(0), q.size(2), -1)


@needs_kernel
@pytest.mark.parametrize("b, h, t, s, d", [(5, 4, 1, 9, 16), (3, 2, 4, 7, 8), (2, 8, 1, 33, 64), (1, 1, 1, 1, 4)])
def test_kernel_equals_attention_in_float64_on_strided_layouts(b, h, t, s, d):
    torch.manual_seed(0)
    qkv = torch.randn(b, t, 3 * h * d)  # queries as the fused projection leaves them: (B, H, T, D) views
    q = qkv[..., : h * d].view(b, t, h, d).transpose(1, 2)
    cache = torch.randn(2, b, s + 3, h, d)  # the KV cache's (B, capacity, H, D) storage
    k, v = cache[0, :, :s].transpose(1, 2), cache[1, :, :s].transpose(1, 2)
    lengths = torch.randint(0, s + 1, (b,))
    lengths[0] = s
    assert decode_kernel.applies(q, k, v)
    out = decode_kernel.decode_attention(q, k, v, lengths)
    torch.testing.assert_close(out.double(), reference(q, k, v, lengths), atol=2e-6, rtol=1e-5)
    everything = decode_kernel.decode_attention(q, k, v)  # no lengths: every key
    torch.testing.assert_close(everything.double(), reference(q, k, v, torch.full((b,), s)), atol=2e-6, rtol=1e-5)


@needs_kernel
def test_a_row_without_keys_gets_zeros_and_bad_shapes_are_refused():
    q, k = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 3, 4)
    out = decode_kernel.decode_attention(q, k, k, torch.tensor([0, 3]))
    assert torch.equal(out[0], torch.zeros(1, 8)) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="lengths must have shape"):
        decode_kernel.decode_attention(q, k, k, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="do not fit"):
        decode_kernel.decode_attention(q, k[:, :, :, :2], k, None)


def test_not_applied_under_autograd_or_in_other_dtypes():
    q, k = torch.randn(2, 2, 1, 4, requires_grad=True), torch.randn(2, 2, 3, 4)
    assert not decode_kernel.applies(q, k, k)
    assert not decode_kernel.applies(q.detach().double(), k.double(), k.double())
    assert not decode_kernel.applies(q.detach().transpose(-1, -2), k, k)  # last dimension not contiguous


def test_prefix_lengths():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)[:, None, None, :]
    assert prefix_lengths(mask).tolist() == [2, 3, 0]
    assert prefix_lengths(torch.tensor([[0, 1, 1]], dtype=torch.bool)[:, None, None, :]) is None  # padding first


def model_and_sources():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=32, n_heads=4, n_layers=2,
                                          d_ff=64, dropout=0.0)).eval()
    with torch.no_grad():  # peaked, so that outputs vary by source
        for p in model.parameters():
            p.mul_(3.0)
    src = torch.randint(3, 40, (6, 11))
    src[1, 4:] = PAD
    src[3, 1:] = PAD
    return model, src


@needs_kernel
def test_decoding_uses_the_kernel_and_gives_the_tokens_of_pytorchs_kernels(monkeypatch):
    model, src = model_and_sources()
    monkeypatch.setattr(transformer_step, "applies", lambda *a: False)  # the modules' path (the lean step: its own tests)
    calls = []
    real = decode_kernel.decode_attention
    monkeypatch.setattr(decode_kernel, "decode_attention", lambda *a: calls.append(a[3] is not None) or real(*a))
    fast_greedy = greedy(model, src, max_len=12, bos_id=BOS, eos_id=EOS)
    fast_beam = beam_search(model, src, beam_size=3, max_len=12, bos_id=BOS, eos_id=EOS)
    assert True in calls and False in calls  # encoder-decoder attention (with lengths) and self-attention
    with torch.no_grad():
        state = model.init_decode(src, max_len=4)
        fast_logits = [model.decode_step(torch.full((6, t), BOS), state)[0] for t in (1, 2, 3)]
    monkeypatch.setattr(decode_kernel.KERNELS, "state", {"fns": None})  # PyTorch's kernels only
    calls.clear()
    assert torch.equal(greedy(model, src, max_len=12, bos_id=BOS, eos_id=EOS), fast_greedy)
    slow_beam = beam_search(model, src, beam_size=3, max_len=12, bos_id=BOS, eos_id=EOS)
    assert [[h.tokens for h in row] for row in slow_beam] == [[h.tokens for h in row] for row in fast_beam]
    with torch.no_grad():
        state = model.init_decode(src, max_len=4)
        for t, fast in zip((1, 2, 3), fast_logits):
            slow = model.decode_step(torch.full((6, t), BOS), state)[0]
            torch.testing.assert_close(fast / slow.abs().max(), slow / slow.abs().max(), atol=1e-5, rtol=0)
    assert not calls


@needs_kernel
def test_padding_at_the_start_or_attention_pictures_take_pytorchs_kernels(monkeypatch):
    model, src = model_and_sources()
    left = torch.full_like(src, PAD)
    left[:, 2:] = src[:, :9]  # padding first: the keys are not a prefix
    calls = []
    real = decode_kernel.decode_attention
    monkeypatch.setattr(decode_kernel, "decode_attention", lambda *a: calls.append(a[3] is not None) or real(*a))
    cached = greedy(model, left, max_len=10, bos_id=BOS, eos_id=EOS)
    assert True not in calls  # encoder-decoder attention went to PyTorch's kernel (it has the mask)
    assert torch.equal(cached, greedy(model, left, max_len=10, bos_id=BOS, eos_id=EOS, use_cache=False))
    calls.clear()
    greedy(model, src, max_len=5, bos_id=BOS, eos_id=EOS, return_attention=True)
    assert not calls  # the weights are wanted: the explicit path


@needs_kernel
def test_the_kernel_is_compiled_once_into_the_cache_directory(fresh_kernel):
    assert decode_kernel.kernel() is not None
    built = list((fresh_kernel / "kernels").glob("decode_step-*.so"))
    assert len(built) == 1 and len(list((fresh_kernel / "kernels").iterdir())) == 1  # no temporary left
    stamp = built[0].stat().st_mtime_ns
    decode_kernel.KERNELS.state.clear()
    assert decode_kernel.kernel() is not None and built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_without_a_compiler_or_when_switched_off_decoding_falls_back(fresh_kernel, monkeypatch):
    model, src = model_and_sources()
    expected = greedy(model, src, max_len=8, bos_id=BOS, eos_id=EOS, use_cache=False)
    monkeypatch.setattr(cpu_kernels, "_reported", set())
    monkeypatch.setenv("CC", "no-such-compiler-attnlab")  # no compiler: said once, loudly, then PyTorch's kernels
    with pytest.warns(RuntimeWarning, match="no C compiler: 'no-such-compiler-attnlab'.*PyTorch's operations"):
        assert decode_kernel.kernel() is None
    assert decode_kernel.KERNELS.status() == (False, "no C compiler: 'no-such-compiler-attnlab' is not on PATH "
                                                     "(install gcc, or set CC)")
    monkeypatch.setattr(decode_kernel.KERNELS, "state", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same reason is not said twice in one process
        assert decode_kernel.kernel() is None
    assert torch.equal(greedy(model, src, max_len=8, bos_id=BOS, eos_id=EOS), expected)
    monkeypatch.setattr(decode_kernel.KERNELS, "state", {})
    monkeypatch.setenv("CC", "false")  # a compiler that fails: a warning naming the kernel, then PyTorch's kernels
    if shutil.which("false"):
        with pytest.warns(RuntimeWarning, match="the decoding kernel did not build"):
            assert decode_kernel.kernel() is None
    monkeypatch.setattr(decode_kernel.KERNELS, "state", {})
    monkeypatch.delenv("CC")
    monkeypatch.setenv("ATTNLAB_KERNELS", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # switched off by the user: no warning
        assert decode_kernel.kernel() is None
    assert decode_kernel.KERNELS.status() == (False, "switched off by ATTNLAB_KERNELS=0")
    assert torch.equal(greedy(model, src, max_len=8, bos_id=BOS, eos_id=EOS), expected)


@needs_kernel
@pytest.mark.parametrize("b, h, d, pos", [(5, 4, 16, 0), (3, 2, 8, 6), (2, 3, 4, 600), (4, 1, 12, 9)])
def test_cache_attention_writes_the_new_key_and_value_then_attends_over_the_cache(b, h, d, pos):
    # d 4 and 12: the scalar tails of the 8-float loops; position 600: more keys than the kernel keeps on its stack
    torch.manual_seed(0)
    width = h * d
    k_cache, v_cache = torch.randn(b, pos + 3, h, d), torch.randn(b, pos + 3, h, d)
    before = k_cache.clone(), v_cache.clone()
    qkv = torch.randn(b, 3 * width + 5)[:, : 3 * width]  # rows of a wider buffer: a row stride of its own
    out = decode_kernel.cache_attention(qkv, k_cache, v_cache, pos, h)
    assert torch.equal(k_cache[:, pos], qkv[:, width: 2 * width].view(b, h, d))
    assert torch.equal(v_cache[:, pos], qkv[:, 2 * width:].view(b, h, d))
    others = torch.arange(pos + 3) != pos
    assert torch.equal(k_cache[:, others], before[0][:, others]) and torch.equal(v_cache[:, others], before[1][:, others])
    q = qkv[:, :width].view(b, h, 1, d)
    k, v = k_cache[:, : pos + 1].transpose(1, 2), v_cache[:, : pos + 1].transpose(1, 2)
    expected = reference(q, k, v, torch.full((b,), pos + 1)).view(b, width)
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        decode_kernel.cache_attention(qkv, k_cache, v_cache, pos + 3, h)  # beyond the capacity
    with pytest.raises(ValueError, match="do not fit"):
        decode_kernel.cache_attention(qkv, k_cache[:, :, :, :-1], v_cache, pos, h)


@needs_kernel
@pytest.mark.parametrize("n, d, affine", [(100, 256, True), (3, 12, True), (7, 40, False)])
def test_add_layer_norm_equals_pytorchs_in_float64(n, d, affine):
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(d, elementwise_affine=affine, eps=1e-5)
    if affine:
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
    x, y = torch.randn(n, d) * 3 + 1, torch.randn(n, d)
    with torch.no_grad():
        expected = norm.double()(x.double() + y.double())
        norm.float()
        out = decode_kernel.add_layer_norm(x, y, norm)
        torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)
        residual = x.clone()
        again = decode_kernel.add_layer_norm(residual, y, norm, keep_sum=True)  # pre-norm: x += y in place
        assert torch.equal(again, out) and torch.equal(residual, x + y)
    with pytest.raises(ValueError, match="do not fit"):
        decode_kernel.add_layer_norm(x, y[:, :-1], norm)
