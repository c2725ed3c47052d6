"""No NaN or inf, forward or backward: fully padded sequences in a batch, attention rows with no key, and
fp16 / bf16 autocast on long sequences (what a training step and a decoding call see)."""
import pytest
import torch

from attnlab import Transformer, TransformerConfig
from attnlab.decoding import greedy
from attnlab.layers.attention import MultiHeadAttention
from attnlab.models.registry import build_model
from attnlab.training.loss import label_smoothed_nll

DTYPES = [torch.bfloat16, torch.float16]


def all_finite(model, *tensors):
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:3]}"
    for t in tensors:
        assert torch.isfinite(t).all()


def transformer(**kw):
    torch.manual_seed(0)
    values = dict(src_vocab_size=50, tgt_vocab_size=50, d_model=32, n_heads=2, n_layers=1, d_ff=64, dropout=0.1)
    values.update(kw)
    return Transformer(TransformerConfig(**values)).train()


def train_step(model, src, tgt, dtype=None):
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        logits = model(src, tgt[:, :-1])
    loss, _ = label_smoothed_nll(logits, tgt[:, 1:], 0, 0.1)
    (loss / max(int((tgt[:, 1:] != 0).sum()), 1)).backward()
    return logits, loss


@pytest.mark.parametrize("arch", ["transformer", "rnn", "rnn-attn"])
@pytest.mark.parametrize("dtype", [None, *DTYPES], ids=["fp32", "bf16", "fp16"])
def test_fully_padded_source_and_target_rows_in_a_batch(arch, dtype):
    torch.manual_seed(1)
    if arch == "transformer":
        model = transformer()
    else:
        model = build_model(arch, dict(src_vocab_size=50, tgt_vocab_size=50, d_embed=16, d_hidden=16, pad_id=0,
                                       dropout=0.1)).train()
    src = torch.randint(4, 50, (3, 9))
    tgt = torch.randint(4, 50, (3, 7))
    src[1] = 0  # a source that is all padding
    tgt[2, 1:] = 0  # a target with nothing to predict
    logits, loss = train_step(model, src, tgt, dtype)
    all_finite(model, logits, loss)


@pytest.mark.parametrize("dtype", [None, *DTYPES], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("need_weights", [False, True])
def test_rows_with_no_key_give_zero_output_and_finite_gradients(dtype, need_weights):
    torch.manual_seed(2)
    attn = MultiHeadAttention(16, 2, dropout=0.1).train()
    x = torch.randn(3, 5, 16, requires_grad=True)
    mask = torch.rand(3, 1, 5, 5) > 0.5
    mask[0] = False  # every row of the first sequence has no key
    mask[2, :, 3] = False  # one row of the third
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        out, weights = attn(x, mask=mask, need_weights=need_weights)
    out.float().sum().backward()
    all_finite(attn, out, x.grad)
    bias = attn.out_proj.bias.to(out.dtype)
    torch.testing.assert_close(out[0], bias.expand(5, 16))  # zero attention output, only the bias
    torch.testing.assert_close(out[2, 3], bias)
    if need_weights:
        assert float(weights[0].detach().abs().sum()) == 0.0 and float(weights[2, :, 3].detach().abs().sum()) == 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_autocast_training_step_on_long_sequences(dtype):
    # 2048 source and 512 target tokens: long score rows, sums over many terms, positions far out
    model = transformer(max_len=4096)
    torch.manual_seed(3)
    src = torch.randint(4, 50, (2, 2048))
    tgt = torch.randint(4, 50, (2, 512))
    src[1, 300:] = 0  # a short sentence padded to the long one
    tgt[1, 200:] = 0
    logits, loss = train_step(model, src, tgt, dtype)
    assert logits.dtype == dtype
    all_finite(model, logits, loss)
    assert 0 < float(loss.detach()) / int((tgt[:, 1:] != 0).sum()) < 10  # a plausible per-token loss, not a saturated one


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_autocast_decoding_a_long_source(dtype):
    model = transformer(max_len=4096).eval()
    torch.manual_seed(4)
    src = torch.randint(4, 50, (2, 1536))
    src[0, 40:] = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        memory = model.encode(src)
        out = greedy(model, src, max_len=8, bos_id=1, eos_id=2)
    assert torch.isfinite(memory).all()
    assert out.shape[0] == 2 and int(out.max()) < 50 and int(out.min()) >= 0
