"""Recurrent encoder-decoders: fixed-context (Cho / Sutskever) and attentional (Bahdanau / Luong)."""
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attnlab.decoding import beam_search, greedy
from attnlab.models.registry import build_model
from attnlab.models.rnn import (
    BahdanauDecoder,
    FixedContextDecoder,
    LuongDecoder,
    RNNAttentionConfig,
    RNNConfig,
    RNNEncoderDecoder,
    top_state,
)

PAD, BOS, EOS, V = 0, 1, 2, 12

# (attention, cell, bidirectional): every decoder with both cells and both encoder kinds somewhere
ARCHS = {
    "fixed-gru-bi": (None, "gru", True),
    "fixed-lstm": (None, "lstm", False),
    "bahdanau-gru-bi": ("bahdanau", "gru", True),
    "bahdanau-lstm": ("bahdanau", "lstm", False),
    "luong-dot-gru-bi": ("luong-dot", "gru", True),
    "luong-general-lstm-bi": ("luong-general", "lstm", True),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest, and two threads spin-wait badly on a shared, loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(name: str, n_layers: int = 2, seed: int = 0, **overrides) -> RNNEncoderDecoder:
    attention, cell, bidirectional = ARCHS[name]
    torch.manual_seed(seed)
    cfg = RNNConfig.preset(
        "test", src_vocab_size=V, tgt_vocab_size=V, attention=attention, cell=cell,
        bidirectional=bidirectional, n_layers=n_layers, **overrides,
    )
    return RNNEncoderDecoder(cfg).eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    src = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, PAD, PAD], [11, 3, 4, 5, PAD]])
    tgt = torch.tensor([[BOS, 3, 4, 5, 6, 7, EOS], [BOS, 8, 9, 10, EOS, PAD, PAD], [BOS, 11, 3, 4, 5, EOS, PAD]])
    return src, tgt


def copy_task(n: int = 32, reverse: bool = False, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences of length 5-8 over ids 3..11; tgt = BOS, the sequence (or its reverse), EOS."""
    g = torch.Generator().manual_seed(seed)
    src = torch.full((n, 8), PAD)
    tgt = torch.full((n, 10), PAD)
    for i in range(n):
        length = int(torch.randint(5, 9, (1,), generator=g))
        seq = torch.randint(3, V, (length,), generator=g)
        src[i, :length] = seq
        tgt[i, 0], tgt[i, 1 : length + 1], tgt[i, length + 1] = BOS, seq.flip(0) if reverse else seq, EOS
    return src, tgt


# ---- teacher-forced forward ---------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ARCHS))
def test_forward_shape_and_decoder_kind(name):
    model = make_model(name)
    src, tgt = batch()
    assert model(src, tgt).shape == (3, 7, V)
    kind = {None: FixedContextDecoder, "bahdanau": BahdanauDecoder}.get(ARCHS[name][0], LuongDecoder)
    assert type(model.decoder) is kind
    assert model.pad_id == PAD


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_appending_source_padding_changes_no_logit(name):
    model = make_model(name)
    src, tgt = batch()
    logits = model(src, tgt)
    padded = torch.cat([src, torch.full((3, 4), PAD)], dim=1)
    torch.testing.assert_close(model(padded, tgt), logits, atol=1e-6, rtol=0)
    if ARCHS[name][0]:
        maps = model.attention_maps(padded, tgt)["cross"]
        assert torch.all(maps[..., 5:] == 0)
        torch.testing.assert_close(maps[..., :5], model.attention_maps(src, tgt)["cross"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_a_row_does_not_depend_on_the_rest_of_the_batch(name):
    model = make_model(name)
    src, tgt = batch()
    logits = model(src, tgt)
    for i in range(3):
        length = int((src[i] != PAD).sum())
        alone = model(src[i : i + 1, :length], tgt[i : i + 1])
        torch.testing.assert_close(alone[0], logits[i], atol=1e-6, rtol=0)


def test_bidirectional_encoder_final_state_is_read_at_the_real_ends():
    # c = [forward state after the last real token; backward state after the first token]
    model = make_model("fixed-gru-bi", n_layers=1)
    src, _ = batch()
    state = model.init_decode(src)
    half = model.cfg.d_hidden // 2
    for i in range(3):
        last = int((src[i] != PAD).sum()) - 1
        torch.testing.assert_close(state.context[i, :half], state.memory[i, last, :half], atol=0, rtol=0)
        torch.testing.assert_close(state.context[i, half:], state.memory[i, 0, half:], atol=0, rtol=0)
    assert torch.all(state.memory[1, 3:] == 0) and torch.all(state.memory[2, 4:] == 0)


def test_fixed_context_decoder_sees_the_source_only_through_c():
    model = make_model("fixed-lstm")
    src, tgt = batch()
    state = model.init_decode(src)
    expected, _, _ = model.decode_step(tgt[:, :1], state)
    blind = model.init_decode(src)
    blind.memory = torch.randn_like(blind.memory)  # the encoder states other than the last are unused
    got, _, weights = model.decode_step(tgt[:, :1], blind, need_weights=True)
    assert torch.equal(got, expected) and weights is None
    changed = model.init_decode(src)
    changed.context = torch.zeros_like(changed.context)
    assert not torch.allclose(model.decode_step(tgt[:, :1], changed)[0], expected, atol=1e-3)


def test_bahdanau_attends_from_the_previous_decoder_state():
    model = make_model("bahdanau-lstm")
    src, tgt = batch()
    with torch.no_grad():
        state = model.init_decode(src)
        for t in range(1, 4):
            s_prev = top_state(state.hidden)  # s_{t-1}
            _, expected = model.decoder.attention(s_prev, state.memory, state.src_mask)
            _, state, weights = model.decode_step(tgt[:, :t], state, need_weights=True)
            torch.testing.assert_close(weights[:, 0, 0], expected, atol=1e-7, rtol=0)


def test_luong_attends_from_the_current_state_and_feeds_its_output_back():
    model = make_model("luong-general-lstm-bi")
    src, tgt = batch()
    with torch.no_grad():
        state = model.init_decode(src)
        assert torch.equal(state.feed, torch.zeros(3, model.cfg.d_hidden))  # h~_0 = 0
        logits, state, weights = model.decode_step(tgt[:, :1], state, need_weights=True)
        s = top_state(state.hidden)  # s_1, after the RNN step
        context, expected = model.decoder.attention(s, state.memory, state.src_mask)
        torch.testing.assert_close(weights[:, 0, 0], expected, atol=1e-7, rtol=0)
        h_tilde = torch.tanh(model.decoder.combine(torch.cat([context, s], dim=-1)))  # tanh(W_c [c; s])
        torch.testing.assert_close(state.feed, h_tilde, atol=1e-6, rtol=0)
        torch.testing.assert_close(logits, model.output_projection(h_tilde), atol=1e-6, rtol=0)
        # input feeding: the next step sees h~_1
        a = model.init_decode(src)
        b = model.init_decode(src)
        model.decode_step(tgt[:, :1], a)
        model.decode_step(tgt[:, :1], b)
        b.feed = -b.feed
        changed = model.decode_step(tgt[:, :2], a)[0] - model.decode_step(tgt[:, :2], b)[0]
        assert changed.abs().max() > 1e-4


def test_fully_padded_source_row_gives_finite_logits():
    model = make_model("bahdanau-gru-bi")
    src, tgt = batch()
    src[1] = PAD
    logits = model(src, tgt)
    assert torch.isfinite(logits).all()
    assert torch.all(model.attention_maps(src, tgt)["cross"][0, 1] == 0)


@pytest.mark.parametrize("name", ["fixed-gru-bi", "bahdanau-lstm", "luong-general-lstm-bi"])
def test_every_parameter_gets_a_gradient(name):
    model = make_model(name).train()
    src, tgt = batch()
    F.cross_entropy(model(src, tgt[:, :-1]).reshape(-1, V), tgt[:, 1:].reshape(-1), ignore_index=PAD).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_tied_output_projection_is_the_target_embedding():
    model = make_model("luong-dot-gru-bi", tie_output=True)  # d_embed 16 != d_hidden 32
    assert model.output_projection.weight is model.output_embedding.weight
    src, tgt = batch()
    assert model(src, tgt).shape == (3, 7, V)


# ---- decoding protocol ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ARCHS))
def test_decode_step_equals_teacher_forced_logits_cached_and_not(name):
    model = make_model(name)
    src, tgt = batch()
    with torch.no_grad():
        logits = model(src, tgt)
        maps = model.attention_maps(src, tgt)["cross"] if ARCHS[name][0] else None
        cached, replay = model.init_decode(src, use_cache=True), model.init_decode(src, use_cache=False)
        for t in range(1, tgt.size(1) + 1):
            a, cached, wa = model.decode_step(tgt[:, :t], cached, need_weights=True)
            b, replay, wb = model.decode_step(tgt[:, :t], replay, need_weights=True)
            torch.testing.assert_close(a, logits[:, t - 1], atol=1e-6, rtol=0)
            if maps is None:
                assert wa is None and wb is None
                torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # one RNN call vs t calls
            else:  # the same step function either way: exactly equal
                assert torch.equal(a, b) and torch.equal(wa, wb)
                assert wa.shape == (3, 1, 1, 5)
                torch.testing.assert_close(wa[:, 0, 0], maps[0, :, 0, t - 1], atol=1e-7, rtol=0)


def test_cached_decode_step_refuses_a_prefix_that_skips_a_step():
    model = make_model("bahdanau-gru-bi")
    src, tgt = batch()
    state = model.init_decode(src)
    model.decode_step(tgt[:, :1], state)
    with pytest.raises(ValueError, match="expected length 2, got 3"):
        model.decode_step(tgt[:, :3], state)


@pytest.mark.parametrize("name", ["fixed-lstm", "bahdanau-gru-bi", "luong-general-lstm-bi"])
def test_reorder_selects_batch_rows_mid_decoding(name):
    model = make_model(name)
    src, tgt = batch()
    index = torch.tensor([2, 0, 0, 1])
    with torch.no_grad():
        state = model.init_decode(src)
        fresh = model.init_decode(src[index])
        for t in range(1, 3):
            model.decode_step(tgt[:, :t], state)
            model.decode_step(tgt[index, :t], fresh)
        state.reorder(index)
        for t in range(3, 6):
            a, _, _ = model.decode_step(tgt[index, :t], state)
            b, _, _ = model.decode_step(tgt[index, :t], fresh)
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


# ---- tiny tasks: each architecture learns them --------------------------------------------------
# (arch, task, steps); every row trains in about a second on one core
OVERFIT = {
    "fixed-gru-bi": ("copy", 150),
    "fixed-lstm": ("reverse", 150),
    "bahdanau-gru-bi": ("copy", 150),
    "luong-dot-gru-bi": ("copy", 150),
    "luong-general-lstm-bi": ("reverse", 150),
}


@functools.lru_cache(maxsize=None)
def trained(name: str) -> tuple[RNNEncoderDecoder, torch.Tensor, torch.Tensor, float]:
    task, steps = OVERFIT[name]
    model = make_model(name, n_layers=1).train()
    src, tgt = copy_task(reverse=task == "reverse")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, V), tgt[:, 1:].reshape(-1), ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), src, tgt, loss.item()


def reference_outputs(tgt: torch.Tensor) -> list[list[int]]:
    return [[int(x) for x in row[1:] if x != PAD] for row in tgt]  # sequence + EOS


def strip(row: torch.Tensor) -> list[int]:
    out = []
    for x in row.tolist():
        out.append(x)
        if x == EOS:
            break
    return out


@pytest.mark.parametrize("name", sorted(OVERFIT))
def test_overfits_a_tiny_copy_or_reverse_task(name):
    model, src, tgt, loss = trained(name)
    assert loss < 0.05
    out = greedy(model, src, max_len=10, bos_id=BOS, eos_id=EOS)
    got = [strip(row) for row in out]
    want = reference_outputs(tgt)
    assert sum(g == w for g, w in zip(got, want)) == len(want)


@pytest.mark.parametrize("name", ["bahdanau-gru-bi", "luong-dot-gru-bi"])
def test_attention_learns_the_diagonal_alignment_of_copying(name):
    model, src, tgt, _ = trained(name)
    weights = model.attention_maps(src, tgt[:, :-1])["cross"][0, :, 0]  # (B, T, S)
    lengths = (src != PAD).sum(1).tolist()
    hits = sum(int(weights[i, j].argmax()) == j for i, n in enumerate(lengths) for j in range(n))
    assert hits / sum(lengths) > 0.8  # output token j attends most to source token j (chance: ~0.15)


@pytest.mark.parametrize("name", ["fixed-gru-bi", "bahdanau-gru-bi", "luong-general-lstm-bi"])
def test_beam_of_one_is_greedy_and_a_batch_decodes_like_single_sentences(name):
    model, src, _, _ = trained(name)
    src = src[:8]
    for use_cache in (True, False):
        out = greedy(model, src, max_len=10, bos_id=BOS, eos_id=EOS, use_cache=use_cache)
        beams = beam_search(model, src, beam_size=1, max_len=10, bos_id=BOS, eos_id=EOS, use_cache=use_cache)
        assert [strip(row) for row in out] == [hyps[0].tokens for hyps in beams]
    batched = beam_search(model, src, beam_size=3, max_len=10, bos_id=BOS, eos_id=EOS, n_best=2)
    for i in range(src.size(0)):
        alone = beam_search(model, src[i : i + 1], beam_size=3, max_len=10, bos_id=BOS, eos_id=EOS, n_best=2)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert abs(alone[0].score - batched[i][0].score) < 1e-4


def test_greedy_returns_attention_over_the_source():
    model, src, _, _ = trained("bahdanau-gru-bi")
    out, attention = greedy(model, src[:4], max_len=10, bos_id=BOS, eos_id=EOS, return_attention=True)
    assert attention.shape == (4, out.size(1), 1, 1, src.size(1))
    # a distribution for every generated token up to its EOS; nothing after it (the row has left the batch)
    generated = torch.ones_like(out, dtype=torch.bool)
    for i, row in enumerate(out.tolist()):
        if EOS in row:
            generated[i, row.index(EOS) + 1:] = False
    assert not bool(generated.all())  # some row ended early
    torch.testing.assert_close(attention.sum(-1)[:, :, 0, 0], generated.float())


# ---- configuration and registry -----------------------------------------------------------------
def test_arch_follows_attention_and_the_attention_family_defaults_to_bahdanau():
    assert RNNConfig(10, 10).arch == "rnn" and RNNConfig(10, 10).attention is None
    assert RNNConfig(10, 10, attention="luong-dot").arch == "rnn-attn"
    assert RNNConfig(10, 10, arch="rnn-attn").attention == "bahdanau"
    assert RNNAttentionConfig(10, 10).attention == "bahdanau"
    assert RNNAttentionConfig.preset("test").arch == "rnn-attn"
    assert RNNConfig.preset("luong").attention == "luong-general" and RNNConfig.preset("luong").n_layers == 4
    with pytest.raises(ValueError, match="arch 'rnn' is the fixed-context model"):
        RNNConfig(10, 10, attention="bahdanau", arch="rnn")


def test_config_round_trips_and_registry_builds_each_family():
    cfg = RNNConfig.preset("test", src_vocab_size=V, tgt_vocab_size=V, attention="luong-general", cell="lstm")
    assert RNNConfig.from_dict(cfg.to_dict()) == cfg
    small = dict(src_vocab_size=V, tgt_vocab_size=V, d_embed=8, d_hidden=16)
    assert isinstance(build_model("rnn", small).decoder, FixedContextDecoder)
    assert isinstance(build_model("rnn-attn", small).decoder, BahdanauDecoder)
    assert isinstance(build_model("rnn-attn", dict(small, attention="luong-dot")).decoder, LuongDecoder)
    model = build_model("rnn-attn", small)
    rebuilt = build_model(model.cfg.arch, model.cfg.to_dict())
    rebuilt.load_state_dict(model.state_dict())
    src, tgt = batch()
    assert torch.equal(rebuilt.eval()(src, tgt), model.eval()(src, tgt))


def test_registry_keeps_the_transformer_when_rnn_is_imported_first():
    code = "import attnlab.models.rnn; from attnlab.models.registry import architectures; print(architectures())"
    src_dir = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, PYTHONPATH=src_dir)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert {"rnn", "rnn-attn", "transformer"} <= set(eval(out.stdout.strip()))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(cell="rnn"), "cell must be 'gru' or 'lstm', got 'rnn'"),
        (dict(attention="luong-concat"), "attention must be None, 'bahdanau'"),
        (dict(arch="lstm"), "arch must be 'rnn' or 'rnn-attn'"),
        (dict(d_hidden=33), "d_hidden must be even"),
        (dict(d_hidden=0), "d_hidden must be a positive int"),
        (dict(n_layers=1.5), "n_layers must be a positive int"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(pad_id=V), "pad_id 12 is outside the vocabulary"),
        (dict(bidirectional="yes"), "must be bools"),
    ],
)
def test_bad_config_raises_a_value_error_naming_the_problem(overrides, message):
    with pytest.raises(ValueError, match=message):
        RNNConfig(**dict(dict(src_vocab_size=V, tgt_vocab_size=V), **overrides))


def test_bad_config_names_raise():
    with pytest.raises(ValueError, match=r"unknown RNNConfig fields: \['heads'\]"):
        RNNConfig.from_dict(dict(src_vocab_size=V, tgt_vocab_size=V, heads=4))
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        RNNConfig.preset("huge")


def test_bad_inputs_raise_value_errors_naming_the_problem():
    model = make_model("bahdanau-gru-bi")
    src, tgt = batch()
    with pytest.raises(ValueError, match="src must hold integer token ids"):
        model(src.float(), tgt)
    with pytest.raises(ValueError, match=r"src must be 2-D \(batch, length\)"):
        model(src[0], tgt)
    with pytest.raises(ValueError, match=r"src has token ids outside \[0, 12\)"):
        model(src + 10, tgt)
    with pytest.raises(ValueError, match=r"tgt has token ids outside \[0, 12\)"):
        model(src, tgt - 1)
    with pytest.raises(ValueError, match="src and tgt batch sizes differ: 3 != 2"):
        model(src, tgt[:2])
    with pytest.raises(ValueError, match="src must be right-padded: row 1"):
        model(src[:, [4, 3, 2, 1, 0]], tgt)
    with pytest.raises(ValueError, match="src and tokens batch sizes differ"):
        model.decode_step(tgt[:2, :1], model.init_decode(src))
    with pytest.raises(ValueError, match="has no attention"):
        make_model("fixed-lstm").attention_maps(src, tgt)
