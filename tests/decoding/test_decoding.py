"""Greedy and beam search: cache equality, batch invariance, a hand-worked beam, a copy task."""
import math

import pytest
import torch

from attnlab import Transformer, TransformerConfig
from attnlab.decoding import beam_search, greedy
from table_model import E, HAND_TABLE, TableModel

BOS, EOS, PAD = 1, 2, 0


def model_with_seed(seed, **kw):
    torch.manual_seed(seed)
    values = dict(src_vocab_size=30, tgt_vocab_size=30, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0)
    values.update(kw)
    model = Transformer(TransformerConfig(**values)).eval()
    with torch.no_grad():  # a random but peaked model, so outputs vary by position and source
        for p in model.parameters():
            p.mul_(3.0)
    return model


@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_greedy_equals_recomputation_exactly(norm_first):
    model = model_with_seed(0, norm_first=norm_first)
    src = torch.randint(3, 30, (4, 9))
    src[2, 5:] = PAD
    cached = greedy(model, src, max_len=15, bos_id=BOS, eos_id=EOS)
    full = greedy(model, src, max_len=15, bos_id=BOS, eos_id=EOS, use_cache=False)
    assert torch.equal(cached, full)
    assert len(set(map(tuple, cached.tolist()))) > 1  # not a degenerate constant output


def test_cached_step_logits_equal_teacher_forced_logits():
    model = model_with_seed(1)
    src = torch.randint(3, 30, (2, 6))
    tgt = torch.cat([torch.full((2, 1), BOS), torch.randint(3, 30, (2, 7))], dim=1)
    forced = model(src, tgt)
    state = model.init_decode(src, max_len=8)
    for t in range(1, 9):
        logits, state, _ = model.decode_step(tgt[:, :t], state)
        scale = forced.abs().max()  # the peaked model has logits in the hundreds
        torch.testing.assert_close(logits / scale, forced[:, t - 1] / scale, atol=2e-5, rtol=0)


def test_batch_of_n_equals_n_batches_of_one():
    model = model_with_seed(2)
    lengths = [9, 4, 7, 1]
    rows = [torch.randint(3, 30, (n,)) for n in lengths]
    src = torch.zeros(4, 9, dtype=torch.long)
    for i, r in enumerate(rows):
        src[i, : len(r)] = r
    batched = greedy(model, src, max_len=12, bos_id=BOS, eos_id=EOS)
    for i, r in enumerate(rows):
        single = greedy(model, r[None], max_len=12, bos_id=BOS, eos_id=EOS)[0]
        n = single.numel()
        assert torch.equal(batched[i, :n], single)
        assert (batched[i, n:] == PAD).all()
    beams = beam_search(model, src, beam_size=3, max_len=12, bos_id=BOS, eos_id=EOS)
    for i, r in enumerate(rows):
        single = beam_search(model, r[None], beam_size=3, max_len=12, bos_id=BOS, eos_id=EOS)[0][0]
        assert beams[i][0].tokens == single.tokens
        assert beams[i][0].score == pytest.approx(single.score, abs=1e-4)


class EndsAtItsLength(torch.nn.Module):
    """A fake decoder: row i says token 3 until its prefix holds lengths[i] tokens after BOS, then EOS; the
    lengths ride in the state and follow its reorder (as a real model's caches do). Counts its steps."""

    pad_id = PAD

    def __init__(self, lengths, vocab=6):
        super().__init__()
        self.lengths, self.vocab, self.steps = torch.tensor(lengths), vocab, 0

    def init_decode(self, src, max_len=10, use_cache=True):
        model = self

        class State:
            lengths = model.lengths.clone()

            def reorder(self, index):
                self.lengths = self.lengths[index]
                return self
        return State()

    def decode_step(self, tokens, state, need_weights=False):
        self.steps += 1
        logits = torch.zeros(tokens.size(0), self.vocab)
        done = tokens.size(1) - 1 >= state.lengths  # tokens generated so far (BOS excluded)
        logits[~done, 3] = 5.0
        logits[done, EOS] = 5.0
        return logits, state, None


def test_greedy_stops_at_eos_pads_after_it_and_stops_when_every_row_has_ended():
    model = EndsAtItsLength([2, 0, 4, 1])
    out = greedy(model, torch.zeros(4, 1, dtype=torch.long), max_len=10, bos_id=BOS, eos_id=EOS)
    assert out.tolist() == [[3, 3, EOS, PAD, PAD], [EOS, PAD, PAD, PAD, PAD], [3, 3, 3, 3, EOS], [3, EOS, PAD, PAD, PAD]]
    assert model.steps == 5  # the longest row's 5 tokens, not max_len = 10


def test_beam_search_stops_when_every_sentence_has_finished():
    model = EndsAtItsLength([2, 0, 4])
    hyps = beam_search(model, torch.zeros(3, 1, dtype=torch.long), beam_size=2, max_len=10, bos_id=BOS, eos_id=EOS,
                       length_penalty_alpha=0.0)
    assert [h[0].tokens for h in hyps] == [[3, 3, EOS], [EOS], [3, 3, 3, 3, EOS]]
    # a sentence is done at K = 2 finished hypotheses: the runner-up (its best beam with another token, then
    # EOS) ends one step after the best, so 4 + 2 steps for the longest sentence, not max_len = 10
    assert model.steps == 6


def test_max_length_reached_greedy_rows_without_eos_fill_max_len():
    model = EndsAtItsLength([2, 9])
    out = greedy(model, torch.zeros(2, 1, dtype=torch.long), max_len=4, bos_id=BOS, eos_id=EOS)
    assert out.tolist() == [[3, 3, EOS, PAD], [3, 3, 3, 3]] and model.steps == 4


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_of_one_equals_greedy(use_cache):
    model = model_with_seed(4)
    src = torch.randint(3, 30, (5, 8))
    out = greedy(model, src, max_len=12, bos_id=BOS, eos_id=EOS)
    hyps = beam_search(model, src, beam_size=1, max_len=12, bos_id=BOS, eos_id=EOS,
                       length_penalty_alpha=0.0, use_cache=use_cache)
    for i in range(5):
        expected = [t for t in out[i].tolist() if t != PAD]
        assert hyps[i][0].tokens == expected


def test_beam_search_hand_worked_case():
    # vocabulary: 0 pad, 1 BOS, 2 EOS, 3 "a", 4 "b". Greedy takes "a" (0.6) then is forced into a
    # poor continuation; beam 2 finds "b" (0.4) followed by a sure EOS.
    e = 1e-9
    table = {
        1: [e, e, e, 0.6, 0.4],       # after BOS
        3: [e, e, 0.3, 0.35, 0.35],   # after "a": EOS 0.3
        4: [e, e, 0.9, 0.05, 0.05],   # after "b": EOS 0.9
    }
    model = TableModel(table)
    src = torch.zeros(1, 1, dtype=torch.long)
    g = greedy(model, src, max_len=2, bos_id=BOS, eos_id=EOS)
    assert g.tolist() == [[3, 3]]
    hyps = beam_search(model, src, beam_size=2, max_len=5, bos_id=BOS, eos_id=EOS,
                       length_penalty_alpha=0.0, n_best=2)[0]
    assert hyps[0].tokens == [4, 2]
    assert hyps[0].log_prob == pytest.approx(math.log(0.4 * 0.9), abs=1e-5)
    # the runner-up is not "a EOS" (0.18): at step 2 it ranks 4th of 2K=4 candidates, outside the top
    # K, while "a b EOS" (0.6 * 0.35 * 0.9 = 0.189) is found one step later
    assert hyps[1].tokens == [3, 4, 2]
    assert hyps[1].log_prob == pytest.approx(math.log(0.6 * 0.35 * 0.9), abs=1e-5)


def test_beam_search_hand_worked_scores_with_gnmt_length_penalty():
    """K = 2, alpha = 2, lp(L) = ((5 + L) / 6) ** alpha.
    Step 1 (from BOS): EOS 0.4, a 0.35, b 0.25. EOS is in the top K: "EOS" finished, log 0.4 = -0.916291,
        lp(1) = 1, score -0.916291. The beams continue with a (0.35) and b (0.25).
    Step 2: a EOS 0.35 * 0.9 = 0.315, b EOS 0.25 * 0.6 = 0.15, b a 0.0625, b b 0.0375, a a 0.021, a b 0.014.
        The top K are both EOS: "a EOS" finished, log 0.315 = -1.155183, lp(2) = (7/6)^2 = 1.361111,
        score -0.848706; the sentence now has K finished hypotheses, so "b EOS" is not kept and the search stops.
    Ranked by score: "a EOS" (-0.848706) before "EOS" (-0.916291); by log-prob alone "EOS" would win."""
    src = torch.zeros(1, 1, dtype=torch.long)
    hyps = beam_search(TableModel(HAND_TABLE), src, beam_size=2, max_len=5, bos_id=BOS, eos_id=EOS,
                       length_penalty_alpha=2.0, n_best=2)[0]
    assert [h.tokens for h in hyps] == [[3, EOS], [EOS]]
    assert [h.log_prob for h in hyps] == pytest.approx([math.log(0.315), math.log(0.4)], abs=1e-6)
    assert [h.score for h in hyps] == pytest.approx([-0.848706, -0.916291], abs=1e-6)
    raw = beam_search(TableModel(HAND_TABLE), src, beam_size=2, max_len=5, bos_id=BOS, eos_id=EOS,
                      length_penalty_alpha=0.0, n_best=2)[0]
    assert [h.tokens for h in raw] == [[EOS], [3, EOS]]
    assert [h.score for h in raw] == pytest.approx([math.log(0.4), math.log(0.315)], abs=1e-6)


def test_min_len_hand_worked():
    """min_len = 2: EOS cannot be chosen at steps 1 and 2, but log-probs stay those of the full distribution.
    Greedy: a (0.35), then a (0.06, EOS barred), then EOS (0.9): "a a EOS".
    Beam, K = 2, alpha = 0: step 1 a 0.35, b 0.25; step 2 (no EOS): b a 0.0625, b b 0.0375, a a 0.021, a b 0.014;
    step 3: b a EOS 0.0625 * 0.9 = 0.05625, b b EOS 0.0375 * 0.6 = 0.0225 (then b b a 0.009375): both EOS
    in the top K, K finished: "b a EOS" (log 0.05625) and "b b EOS" (log 0.0225)."""
    src = torch.zeros(1, 1, dtype=torch.long)
    assert greedy(TableModel(HAND_TABLE), src, max_len=5, bos_id=BOS, eos_id=EOS, min_len=2).tolist() == [[3, 3, EOS]]
    hyps = beam_search(TableModel(HAND_TABLE), src, beam_size=2, max_len=5, bos_id=BOS, eos_id=EOS,
                       length_penalty_alpha=0.0, n_best=2, min_len=2)[0]
    assert [h.tokens for h in hyps] == [[4, 3, EOS], [4, 4, EOS]]
    assert [h.log_prob for h in hyps] == pytest.approx([math.log(0.05625), math.log(0.0225)], abs=1e-6)


def test_greedy_hand_worked_eos_first_banned_ids_and_forced_eos():
    """On HAND_TABLE: EOS (0.4) is the best first token, so greedy stops at once (min_len 0 by default).
    Banning EOS: a (0.35), then a (0.06) every step. Banning "a" with min_len 1: b (0.25), then EOS (0.6).
    force_eos with min_len beyond max_len = 3: a a, then the last step is EOS."""
    src = torch.zeros(1, 1, dtype=torch.long)
    model = TableModel(HAND_TABLE)
    assert greedy(model, src, max_len=5, bos_id=BOS, eos_id=EOS).tolist() == [[EOS]]
    assert greedy(model, src, max_len=5, bos_id=BOS, eos_id=EOS, banned=[EOS]).tolist() == [[3, 3, 3, 3, 3]]
    assert greedy(model, src, max_len=5, bos_id=BOS, eos_id=EOS, banned=[3], min_len=1).tolist() == [[4, EOS]]
    assert greedy(model, src, max_len=3, bos_id=BOS, eos_id=EOS, min_len=9, force_eos=True).tolist() == [[3, 3, EOS]]


def test_max_len_reached_beam_keeps_the_unfinished_hypotheses_hand_worked():
    """No EOS within max_len = 2: the K best hypotheses at the last step are returned without EOS.
    K = 2, alpha = 1: step 1 a 0.7, b 0.3; step 2: a a 0.49, a b 0.21, b a 0.18, b b 0.12; the top K are kept:
    "a a" log 0.49 / lp(2) = -0.713350 / (7/6) = -0.611443, "a b" log 0.21 / (7/6) = -1.337698."""
    table = {BOS: [E, E, E, 0.7, 0.3], 3: [E, E, E, 0.7, 0.3], 4: [E, E, E, 0.6, 0.4]}
    hyps = beam_search(TableModel(table), torch.zeros(1, 1, dtype=torch.long), beam_size=2, max_len=2, bos_id=BOS,
                       eos_id=EOS, length_penalty_alpha=1.0, n_best=2)[0]
    assert [h.tokens for h in hyps] == [[3, 3], [3, 4]]
    assert [h.score for h in hyps] == pytest.approx([-0.611443, -1.337698], abs=1e-6)


def test_beam_search_looks_beyond_each_beams_k_best_tokens_hand_worked():
    """K = 2, alpha = 0: a beam's 3rd-best token can be among the sentence's 2K best extensions.
    Step 1: a 0.9, b 0.1.  Step 2: a EOS 0.45, a a 0.27, a b 0.18 (the 3rd token of beam "a"), b EOS 0.095:
    "a EOS" finished, "a a" and "a b" continue.  Step 3: a b EOS 0.18 * 0.95 = 0.171, a a EOS 0.27 * 0.5 = 0.135:
    "a b EOS" finished, the second. Searching only each beam's K best tokens would have lost "a b"."""
    table = {BOS: [E, E, E, 0.9, 0.1], 3: [E, E, 0.5, 0.3, 0.2], 4: [E, E, 0.95, 0.03, 0.02]}
    hyps = beam_search(TableModel(table), torch.zeros(1, 1, dtype=torch.long), beam_size=2, max_len=5, bos_id=BOS,
                       eos_id=EOS, length_penalty_alpha=0.0, n_best=2)[0]
    assert [h.tokens for h in hyps] == [[3, EOS], [3, 4, EOS]]
    assert [h.log_prob for h in hyps] == pytest.approx([math.log(0.45), math.log(0.171)], abs=1e-6)


def test_default_length_penalty_is_the_papers_alpha_0_6():
    """Vaswani et al. 2017, section 6.1: beam 4, alpha = 0.6. On HAND_TABLE: "EOS" log 0.4 / lp(1) = -0.916291;
    "a EOS" log 0.315 / (7/6)^0.6 = -1.155183 / 1.096903 = -1.053131."""
    hyps = beam_search(TableModel(HAND_TABLE), torch.zeros(1, 1, dtype=torch.long), beam_size=2, max_len=5,
                       bos_id=BOS, eos_id=EOS, n_best=2)[0]
    assert [h.tokens for h in hyps] == [[EOS], [3, EOS]]
    assert [h.score for h in hyps] == pytest.approx([-0.916291, -1.053131], abs=1e-6)


def test_max_len_1_decodes_one_token():
    table = {BOS: [E, E, 0.1, 0.6, 0.3]}
    src = torch.zeros(1, 1, dtype=torch.long)
    assert greedy(TableModel(table), src, max_len=1, bos_id=BOS, eos_id=EOS).tolist() == [[3]]
    hyps = beam_search(TableModel(table), src, beam_size=2, max_len=1, bos_id=BOS, eos_id=EOS,
                       length_penalty_alpha=0.0, n_best=2)[0]
    assert [h.tokens for h in hyps] == [[3], [4]]


def test_gnmt_length_penalty_formula():
    from attnlab.decoding.beam import length_penalty

    assert length_penalty(1, 0.6) == pytest.approx(1.0)
    assert length_penalty(7, 0.6) == pytest.approx((12 / 6) ** 0.6)  # 1.515717
    assert length_penalty(10, 1.0) == pytest.approx(2.5)
    assert length_penalty(3, 0.0) == 1.0


def test_length_penalty_prefers_longer_hypotheses():
    e = 1e-9
    table = {1: [e, e, 0.5, 0.5, e], 3: [e, e, 0.9, e, 0.1], 4: [e, e, 1.0, e, e]}
    src = torch.zeros(1, 1, dtype=torch.long)
    raw = beam_search(TableModel(table), src, beam_size=2, max_len=4, bos_id=BOS, eos_id=EOS,
                      length_penalty_alpha=0.0)[0][0]
    assert raw.tokens == [2]  # log 0.5 > log 0.45
    normalised = beam_search(TableModel(table), src, beam_size=2, max_len=4, bos_id=BOS, eos_id=EOS,
                             length_penalty_alpha=2.0)[0][0]
    assert normalised.tokens == [3, 2]


def test_bad_decoding_arguments():
    model = model_with_seed(5)
    src = torch.randint(3, 30, (1, 4))
    with pytest.raises(ValueError, match="max_len"):
        greedy(model, src, max_len=0, bos_id=BOS, eos_id=EOS)
    with pytest.raises(ValueError, match="n_best"):
        beam_search(model, src, beam_size=2, n_best=3)


def test_tiny_transformer_overfits_a_copy_task():
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=14, tgt_vocab_size=14, d_model=64, n_heads=4, n_layers=2,
                            d_ff=128, dropout=0.0, share_embeddings=True)
    model = Transformer(cfg)
    gen = torch.Generator().manual_seed(0)
    n, length = 32, 8
    lengths = torch.randint(4, length + 1, (n,), generator=gen)
    src = torch.zeros(n, length, dtype=torch.long)
    for i, k in enumerate(lengths):
        src[i, :k] = torch.randint(3, 14, (int(k),), generator=gen)
    tgt = torch.zeros(n, length + 2, dtype=torch.long)
    tgt[:, 0] = BOS
    for i, k in enumerate(lengths):
        tgt[i, 1 : k + 1] = src[i, :k]
        tgt[i, k + 1] = EOS
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(250):
        logits = model(src, tgt[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 14), tgt[:, 1:].reshape(-1), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    out = greedy(model, src, max_len=length + 1, bos_id=BOS, eos_id=EOS)
    exact = sum(out[i, : k + 1].tolist() == tgt[i, 1 : k + 2].tolist() for i, k in enumerate(lengths.tolist()))
    assert exact == n


def test_cached_beam_search_equals_recomputation_and_shares_the_source_between_beams():
    """Beams of one sentence share its encoder output and cross-attention keys/values (one copy per
    sentence); the hypotheses equal those of beam search without any cache, also as sentences finish
    and leave the batch, and the weights of a grouped decoding step equal those of an expanded one."""
    model = model_with_seed(11)
    with torch.no_grad():
        model.output_embedding.weight[EOS] *= 3.0  # EOS likely enough that sentences end at different steps
    torch.manual_seed(11)
    src = torch.randint(3, 30, (5, 8))
    src[1, 4:] = PAD
    cached = beam_search(model, src, beam_size=4, max_len=12, bos_id=BOS, eos_id=EOS, n_best=4)
    full = beam_search(model, src, beam_size=4, max_len=12, bos_id=BOS, eos_id=EOS, n_best=4, use_cache=False)
    assert [[h.tokens for h in hyps] for hyps in cached] == [[h.tokens for h in hyps] for hyps in full]
    for a, b in zip(cached, full):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
    assert len({len(hyps[0].tokens) for hyps in cached}) > 1  # sentences finish at different steps

    with torch.no_grad():  # as the decoders run (with gradients on, training kernels round differently)
        state = model.init_decode(src, max_len=4)
        state.reorder(torch.arange(5).repeat_interleave(3))  # 3 rows per sentence
        assert state.group == 3 and state.memory.size(0) == 5 and state.batch_size == 15
        state.reorder(torch.tensor([2, 0, 1, 12, 12, 13]))  # parents within sentences 0 and 4
        assert state.group == 3 and state.memory.size(0) == 2
        expanded = model.init_decode(src[[0, 0, 0, 4, 4, 4]], max_len=4)
        prefix = torch.full((6, 1), BOS)
        logits, _, w = model.decode_step(prefix, state, need_weights=True)
        ref_logits, _, ref_w = model.decode_step(prefix, expanded, need_weights=True)
        # the 5 sources are encoded packed, the 6 full-length copies unpacked: the kernels round differently,
        # and the peaked model's logits are in the hundreds
        scale = ref_logits.abs().max()
        torch.testing.assert_close(logits / scale, ref_logits / scale, atol=2e-5, rtol=0)
        torch.testing.assert_close(w, ref_w, atol=1e-4, rtol=0)  # a wrong source row would be off by ~0.1
        state.reorder(torch.tensor([0, 3, 1]))  # irregular: one source copy per row
        assert state.group == 1 and state.memory.size(0) == 3
        # packed vs unpadded encoder again: both are within ~7e-5 of float64 on this peaked model; a wrong
        # row would be off by ~1
        torch.testing.assert_close(state.memory, expanded.memory[[0, 3, 1]], atol=1e-4, rtol=0)


@torch.no_grad()  # as the decoders run
def test_decoding_encodes_the_real_source_tokens_only():
    """init_decode runs the encoder on the real tokens (packed): the memory equals the padded encoder's
    at every real position and is zero at the pads; an unpadded batch takes the padded path."""
    model = model_with_seed(3)
    src = torch.randint(3, 30, (3, 8))
    src[0, 5:] = PAD
    src[2, 2:] = PAD
    state = model.init_decode(src, max_len=4)
    padded = model.encode(src)
    real = src != PAD
    scale = padded.abs().max()
    # packed attention (matmuls) vs the padded encoder's fused kernel: fp32 rounding apart (both are within
    # ~4e-6 of float64 here, relative to the peaked model's largest value)
    torch.testing.assert_close(state.memory[real] / scale, padded[real] / scale, atol=1e-5, rtol=0)
    assert float(state.memory[~real].abs().sum()) == 0.0
    for (k, v), layer in zip(state.memory_kv, model.decoder.layers):
        k_ref, v_ref = layer.cross_attn.project_kv(padded)
        keys = real[:, None, :, None].expand_as(k)
        torch.testing.assert_close(k[keys] / scale, k_ref[keys] / scale, atol=3e-5, rtol=0)
        torch.testing.assert_close(v[keys] / scale, v_ref[keys] / scale, atol=3e-5, rtol=0)
    full = torch.randint(3, 30, (2, 5))
    torch.testing.assert_close(model.init_decode(full, max_len=4).memory, model.encode(full))


def test_top_tokens_and_in_place_logsumexp_match_torch():
    from attnlab.decoding.beam import logsumexp_, top_tokens

    g = torch.Generator().manual_seed(0)
    for vocab in (8000, 8003, 640, 1088):
        for trial in range(6):
            x = torch.randn(20, vocab, generator=g)
            if trial % 3 == 1:
                x[:, ::5] = float("-inf")
            values, index = top_tokens(x, 8)
            assert torch.equal(values, x.topk(8, dim=-1).values)
            assert torch.equal(x.gather(1, index), values)
            torch.testing.assert_close(logsumexp_(x.clone()), torch.logsumexp(x, dim=-1, keepdim=True))


def test_kv_cache_reorder_reuses_its_second_buffers():
    from attnlab.layers.kv_cache import KVCache

    cache = KVCache(4, 2, 6, 3)
    k = torch.randn(4, 2, 3, 3)
    cache.update(0, k, k + 1)
    first = cache.k.data_ptr()
    cache.reorder(torch.tensor([3, 3, 0, 1]))
    torch.testing.assert_close(cache.k[:, :3].transpose(1, 2), k[[3, 3, 0, 1]])
    cache.reorder(torch.tensor([1, 0]))  # fewer rows: a view of the spare buffers, no new memory
    torch.testing.assert_close(cache.v[:, :3].transpose(1, 2), (k + 1)[[3, 3]][[1, 0]])
    assert cache.k.data_ptr() == first


@pytest.mark.parametrize("denominator", [1, 2, 4, 10**9])
def test_deferred_compaction_gives_the_same_tokens_and_attention(monkeypatch, denominator):
    """Finished rows stay in the batch until a fraction of them has ended; what they compute meanwhile
    is never written: tokens and attention equal immediate compaction (10**9: compact at every end)."""
    import sys

    greedy_module = sys.modules["attnlab.decoding.greedy"]

    class EndsByItsOwnTokens(torch.nn.Module):  # sentences end at different steps, by their own tokens
        def __init__(self, inner):
            super().__init__()
            self.inner, self.pad_id = inner, inner.pad_id

        def init_decode(self, src, max_len=128, use_cache=True):
            return self.inner.init_decode(src, max_len=max_len, use_cache=use_cache)

        def decode_step(self, tokens, state, need_weights=False):
            logits, state, weights = self.inner.decode_step(tokens, state, need_weights)
            if tokens.size(1) > 2:
                logits[(tokens.sum(dim=1) + tokens.size(1)) % 6 == 0, EOS] = 1e4
            return logits, state, weights

    model = EndsByItsOwnTokens(model_with_seed(5))
    torch.manual_seed(0)
    src = torch.randint(3, 30, (12, 8))
    src[3, 4:] = PAD
    ref_tokens, ref_attention = greedy(model, src, max_len=14, bos_id=BOS, eos_id=EOS, return_attention=True)
    lengths = [(row == EOS).nonzero()[0].item() + 1 if (row == EOS).any() else 14 for row in ref_tokens]
    assert len(set(lengths)) > 2  # rows end at different steps
    monkeypatch.setattr(greedy_module, "COMPACT_DENOMINATOR", denominator)
    tokens, attention = greedy(model, src, max_len=14, bos_id=BOS, eos_id=EOS, return_attention=True)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(attention, ref_attention, atol=1e-6, rtol=0)
    for i, n in enumerate(lengths):
        assert float(attention[i, n:].abs().sum()) == 0.0


def test_fast_argmax_is_the_first_maximum_of_each_row():
    """Greedy's argmax over blocks of 64 (vocabularies >= 64, a partial last block or none), ties included."""
    from attnlab.decoding.greedy import fast_argmax

    g = torch.Generator().manual_seed(0)
    for vocab in (64, 100, 640, 8000, 8003):
        x = torch.randn(40, vocab, generator=g)
        x[0, [3, vocab - 1]] = 50.0  # a tie: the first wins
        x[1, -1] = 50.0  # the maximum in the partial last block (or the last of a full one)
        x[2, 64 % vocab] = x[2, (64 % vocab) + 1] = 50.0  # a tie inside one block
        x[3] = 0.0  # all equal: index 0
        assert torch.equal(fast_argmax(x), x.argmax(dim=-1)), vocab
