"""Packed head-major attention (training path): same values and gradients as the padded attention."""

import pytest
import torch

import attnlab.layers.packed_attention as packed_module
from attnlab import Transformer, TransformerConfig
from attnlab.layers.attention import scaled_dot_product_attention
from attnlab.layers.masks import causal_mask
from attnlab.layers.packed_attention import _Layout, attention_groups, packed_attention
from attnlab.layers.packing import Packing
from required import needs_kernel

B, T, S, H, DK = 5, 7, 6, 4, 8
D = H * DK


def packings():
    tgt_len, src_len = torch.tensor([7, 3, 1, 5, 6]), torch.tensor([6, 2, 4, 1, 5])
    return Packing(torch.arange(T)[None] < tgt_len[:, None]), Packing(torch.arange(S)[None] < src_len[:, None])


def heads(x):
    return x.view(x.size(0), x.size(1), H, DK).transpose(1, 2)


def padded_reference(p_q, p_kv, q, k, v, mask):
    out, _ = scaled_dot_product_attention(heads(p_q.unpack(q)), heads(p_kv.unpack(k)), heads(p_kv.unpack(v)), mask)
    return p_q.pack(out.transpose(1, 2).reshape(p_q.batch, p_q.length, D))


@pytest.fixture(params=[1, 2], ids=["one-group", "two-groups"])
def grouped(request, monkeypatch):
    """Run with the batch in one group, or in groups of 2+ sentences (here 2 groups of 5 sentences)."""
    if request.param > 1:
        real = packed_module.attention_groups
        monkeypatch.setattr(packed_module, "attention_groups", lambda p: real(p, max_groups=request.param, min_sentences=2))
    return request.param


def test_self_attention_equals_padded_forward_and_backward(grouped):
    torch.manual_seed(0)
    p, _ = packings()
    qkv = torch.randn(p.n_tokens, 3 * D, dtype=torch.float64, requires_grad=True)
    mask = p.key_mask & causal_mask(T, qkv.device)
    out = packed_attention(qkv, None, p, None, mask, H)
    assert len(next(iter(p.layouts.values()))[0].blocks) == grouped
    grad = torch.randn_like(out)
    (ours,) = torch.autograd.grad(out, qkv, grad)
    ref = padded_reference(p, p, *qkv.chunk(3, dim=-1), mask)
    (theirs,) = torch.autograd.grad(ref, qkv, grad)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda x: packed_attention(x, None, p, None, mask, H), (qkv,))


def test_cross_attention_equals_padded_forward_and_backward(grouped):
    torch.manual_seed(1)
    p_t, p_s = packings()
    q = torch.randn(p_t.n_tokens, D, dtype=torch.float64, requires_grad=True)
    kv = torch.randn(p_s.n_tokens, 2 * D, dtype=torch.float64, requires_grad=True)
    out = packed_attention(q, kv, p_t, p_s, p_s.key_mask, H)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, kv), grad)
    ref = padded_reference(p_t, p_s, q, *kv.chunk(2, dim=-1), p_s.key_mask)
    theirs = torch.autograd.grad(ref, (q, kv), grad)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda a, b: packed_attention(a, b, p_t, p_s, p_s.key_mask, H), (q, kv))


def test_layout_places_every_value_once_in_its_length_group():
    p, _ = packings()  # target lengths 7, 3, 1, 5, 6
    groups = [torch.tensor([0, 4]), torch.tensor([3, 1, 2])]  # longest first, as attention_groups orders them
    layout = _Layout(p, groups, H, 3)
    assert layout.blocks == [(0, 2, 7), (3 * 2 * H * 7, 3, 5)]  # (first row, sentences, their longest)
    rows = layout.rows
    assert rows.numel() == p.n_tokens * 3 * H and rows.unique().numel() == rows.numel()
    assert int(rows.max()) < layout.size == 3 * H * (2 * 7 + 3 * 5)
    # packed token n (sentence 1, position 2), part 1 (K), head 2: group 1, rank 1 in it, block length 5
    n = int((p.index == 1 * T + 2).nonzero())
    assert int(rows[n * 3 * H + 1 * H + 2]) == 3 * 2 * H * 7 + ((1 * 3 + 1) * H + 2) * 5 + 2


def test_attention_groups_sort_by_length_and_keep_groups_large():
    lengths = torch.tensor([5, 30, 8, 12] * 16)
    p = Packing(torch.arange(30)[None] < lengths[:, None])
    groups = attention_groups(p)
    assert len(groups) == 4 and all(g.numel() == 16 for g in groups)
    assert [int(lengths[g].max()) for g in groups] == [30, 12, 8, 5]
    assert len(attention_groups(Packing(torch.ones(20, 3, dtype=torch.bool)))) == 1


def _count_packed_calls(monkeypatch):
    """Calls of either packed path: PyTorch's batched matmuls or the C kernel."""
    calls = []
    for fn in (packed_module._PackedAttention, packed_module._KernelPackedAttention):
        monkeypatch.setattr(fn, "apply", lambda *a, real=fn.apply: calls.append(1) or real(*a))
    return calls


def test_training_forward_takes_the_packed_path_and_matches_padded(monkeypatch):
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0)
    model = Transformer(cfg).train()
    src = torch.tensor([[5, 6, 7, 8, 2], [9, 4, 2, 0, 0], [3, 2, 0, 0, 0]])
    tgt = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 4, 4, 0, 0, 0], [1, 3, 3, 3, 0, 0]])
    keep = tgt != 0
    calls = _count_packed_calls(monkeypatch)
    packed = model(src, tgt, positions=keep)
    assert len(calls) == 3 * cfg.n_layers  # encoder self, decoder self, decoder cross, per layer
    torch.testing.assert_close(packed, model(src, tgt)[keep], atol=1e-5, rtol=1e-5)


def test_empty_source_sentence_takes_the_general_path(monkeypatch):
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=32, n_heads=4, n_layers=1, d_ff=64, dropout=0.0)
    model = Transformer(cfg).train()
    src = torch.tensor([[5, 6, 7], [0, 0, 0]])  # the second source is empty: its target queries have no key
    tgt = torch.tensor([[1, 5, 6], [1, 4, 0]])
    calls = _count_packed_calls(monkeypatch)
    out = model(src, tgt, positions=tgt != 0)
    out.square().sum().backward()
    assert len(calls) == 1  # decoder self-attention only: encoder and cross attention see a keyless row
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("dropout", [0.1])
def test_attention_dropout_takes_the_general_path(monkeypatch, dropout):
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=32, n_heads=4, n_layers=1, d_ff=64,
                            attn_dropout=dropout)
    model = Transformer(cfg).train()
    calls = _count_packed_calls(monkeypatch)
    tgt = torch.tensor([[1, 5, 6], [1, 4, 0]])
    model(torch.tensor([[5, 6, 7], [4, 0, 0]]), tgt, positions=tgt != 0)
    assert calls == []


def test_inference_takes_the_packed_path_too(monkeypatch):
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=32, n_heads=4, n_layers=2, d_ff=64)
    model = Transformer(cfg).eval()
    src = torch.tensor([[5, 6, 7, 8, 2], [9, 4, 2, 0, 0], [3, 2, 0, 0, 0]])
    tgt = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 4, 4, 0, 0, 0], [1, 3, 3, 3, 0, 0]])
    calls = _count_packed_calls(monkeypatch)
    with torch.no_grad():
        packed = model(src, tgt, positions=tgt != 0)  # e.g. the validation loss
        assert len(calls) == 3 * cfg.n_layers
        memory, _ = model.encode_source(src)  # decoding's encoder, on the real source tokens
        assert len(calls) == 4 * cfg.n_layers
        torch.testing.assert_close(packed, model(src, tgt)[tgt != 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(memory, model.encode(src) * (src != 0)[..., None], atol=1e-5, rtol=1e-5)


# ---- the C kernel (packed_attention.c): float32, the packings' own masks -------------------------


def long_packings():
    """Lengths 1-40: key blocks of 8 and of 4 x 8 in the kernel, a query of one token, a longest row."""
    tgt_len, src_len = torch.tensor([7, 3, 1, 5, 40, 33]), torch.tensor([6, 2, 4, 1, 37, 9])
    t, s = int(tgt_len.max()), int(src_len.max())
    return Packing(torch.arange(t)[None] < tgt_len[:, None]), Packing(torch.arange(s)[None] < src_len[:, None])


def kernel_versus_float64(x_q, x_kv, p_q, p_kv, mask, heads_):
    """The kernel's output and gradients in float32 against the padded attention in float64."""
    out = packed_attention(x_q, x_kv, p_q, None if x_kv is None else p_kv, mask, heads_)
    assert type(out.grad_fn).__name__ == "_KernelPackedAttentionBackward"
    inputs = (x_q,) if x_kv is None else (x_q, x_kv)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, inputs, grad)
    wide = [x.detach().double().requires_grad_() for x in inputs]
    d = out.size(1)
    h = d // heads_

    def split(x):
        return x.view(x.size(0), x.size(1), heads_, h).transpose(1, 2)

    if x_kv is None:
        q, k, v = wide[0].split(d, dim=-1)
    else:
        q, (k, v) = wide[0], wide[1].split(d, dim=-1)
    ref, _ = scaled_dot_product_attention(split(p_q.unpack(q)), split(p_kv.unpack(k)), split(p_kv.unpack(v)), mask)
    ref = p_q.pack(ref.transpose(1, 2).reshape(p_q.batch, p_q.length, d))
    theirs = torch.autograd.grad(ref, wide, grad.double())
    torch.testing.assert_close(out.double(), ref, atol=3e-6, rtol=1e-5)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("d_k", [8, 12, 40, 64])  # chunks of 8, a scalar tail, 32 + 8, 2 x 32
def test_kernel_equals_float64_attention_causal_padding_and_cross(d_k):
    torch.manual_seed(d_k)
    p_t, p_s = long_packings()
    qkv = torch.randn(p_t.n_tokens, 3 * 3 * d_k, requires_grad=True)
    kernel_versus_float64(qkv, None, p_t, p_t, p_t.key_mask & causal_mask(p_t.length, qkv.device), 3)  # decoder
    kernel_versus_float64(qkv, None, p_t, p_t, p_t.key_mask, 3)  # encoder: padding only
    q = torch.randn(p_t.n_tokens, 3 * d_k, requires_grad=True)
    kv = torch.randn(p_s.n_tokens, 2 * 3 * d_k, requires_grad=True)
    kernel_versus_float64(q, kv, p_t, p_s, p_s.key_mask, 3)


@needs_kernel
def test_kernel_results_do_not_depend_on_the_threads():
    torch.manual_seed(0)
    p_t, _ = long_packings()
    qkv = torch.randn(p_t.n_tokens, 3 * 32, requires_grad=True)
    mask = p_t.key_mask & causal_mask(p_t.length, qkv.device)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            out = packed_attention(qkv, None, p_t, None, mask, 4)
            results.append((out, torch.autograd.grad(out, qkv, torch.ones_like(out))[0]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@needs_kernel
def test_other_masks_and_other_dtypes_take_pytorchs_path(monkeypatch):
    torch.manual_seed(0)
    p, _ = packings()
    calls = []
    real = packed_module._PackedAttention.apply
    monkeypatch.setattr(packed_module._PackedAttention, "apply", lambda *a: calls.append(1) or real(*a))
    qkv = torch.randn(p.n_tokens, 3 * D)
    holey = (p.key_mask & causal_mask(T, qkv.device)).clone()
    holey[0, 0, 3, 1] = False  # not the packing's own mask
    out = packed_attention(qkv, None, p, None, holey, H)
    assert calls == [1]
    torch.testing.assert_close(out, padded_reference(p, p, *qkv.chunk(3, dim=-1), holey), atol=1e-6, rtol=1e-5)
    packed_attention(qkv.double(), None, p, None, p.key_mask, H)
    assert calls == [1, 1]
    packed_attention(qkv, None, p, None, p.key_mask, H)
    assert calls == [1, 1]  # the kernel


def test_without_the_kernel_pytorchs_path_gives_the_same(monkeypatch):
    torch.manual_seed(0)
    p, _ = packings()
    qkv = torch.randn(p.n_tokens, 3 * D, requires_grad=True)
    mask = p.key_mask & causal_mask(T, qkv.device)
    out = packed_attention(qkv, None, p, None, mask, H)
    grad = torch.autograd.grad(out, qkv, torch.ones_like(out))[0]
    monkeypatch.setattr(packed_module.KERNELS, "state", {"fns": None})
    p2, _ = packings()  # a fresh batch: its plan is made without the kernel
    out2 = packed_attention(qkv, None, p2, None, p2.key_mask & causal_mask(T, qkv.device), H)
    assert type(out2.grad_fn).__name__ == "_PackedAttentionBackward"
    torch.testing.assert_close(out2, out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(out2, qkv, torch.ones_like(out2))[0], grad, atol=1e-5, rtol=1e-5)


@needs_kernel
def test_kernel_passes_nan_on_like_pytorchs_softmax():
    torch.manual_seed(0)
    p_t, _ = long_packings()
    qkv = torch.randn(p_t.n_tokens, 3 * 32)
    qkv[4, 0] = float("nan")  # a query of sentence 0 (lengths 7, ...): row 4
    out = packed_attention(qkv, None, p_t, None, p_t.key_mask, 4)
    assert torch.isnan(out[4, :8]).all()  # its first head
    assert torch.isfinite(out[7:]).all()  # other sentences are untouched
