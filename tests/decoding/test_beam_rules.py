"""Beam search's rules worked by hand: transformers' "power" length normalisation (K best finished, stop when
the best live hypothesis cannot win), forced EOS, the documented defaults, and the fast top-k's fallback."""
import math

import pytest
import torch

from attnlab.decoding import beam_search, greedy
from attnlab.decoding.beam import Hypothesis, _add_finished, _done, top_tokens
from table_model import BOS, E, EOS, HAND_TABLE, TableModel

SRC = torch.zeros(1, 1, dtype=torch.long)


def _hyp(score, tokens=(EOS,)):
    return Hypothesis(list(tokens), score, score)


def test_power_length_norm_keeps_the_k_best_and_stops_when_no_live_hypothesis_can_win():
    """transformers' beam rule, K = 2, alpha = 2, lp(L) = L ** 2 (early_stopping=False).
    Step 1: EOS 0.92, a 0.055, b 0.025: "EOS" finished, log 0.92 = -0.083382 / 1; a and b go on.
    Step 2: a b 0.0528, b EOS 0.01375, b b 0.00725, ...: "b EOS" finished, log 0.01375 / 4 = -1.071679. The
        sentence has K finished, but the best live one could still win: log 0.0528 / 4 = -0.735 > -1.071679.
    Step 3: a b EOS 0.02904 (log / 9 = -0.393231) replaces the worst finished ("b EOS"); the best live "a b b"
        0.015312 gives log / 9 = -0.464 <= -0.393231: done.
    With early_stopping the search stops at step 2 with "EOS" and "b EOS"; fairseq's rule (gnmt) also keeps the
    first K."""
    table = {BOS: [E, E, 0.92, 0.055, 0.025], 3: [E, E, 0.03, 0.01, 0.96], 4: [E, E, 0.55, 0.16, 0.29]}

    def run(**kw):
        hyps = beam_search(TableModel(table), SRC, beam_size=2, max_len=8, bos_id=BOS, eos_id=EOS,
                           length_penalty_alpha=2.0, n_best=2, **kw)[0]
        return [h.tokens for h in hyps], [h.score for h in hyps]

    tokens, scores = run(length_norm="power")
    assert tokens == [[EOS], [3, 4, EOS]]
    assert scores == pytest.approx([math.log(0.92), math.log(0.055 * 0.96 * 0.55) / 9], abs=1e-6)
    assert scores == pytest.approx([-0.083382, -0.393231], abs=1e-6)
    tokens, scores = run(length_norm="power", early_stopping=True)
    assert tokens == [[EOS], [4, EOS]]
    assert scores[1] == pytest.approx(math.log(0.025 * 0.55) / 4, abs=1e-6)
    tokens, _ = run(length_norm="gnmt")
    assert tokens[1] == [4, EOS]


def test_finished_hypotheses_first_k_or_k_best_ties_keep_the_first():
    hyps = [_hyp(-1.0, [3, EOS]), _hyp(-2.0, [4, EOS])]
    _add_finished(hyps, _hyp(-0.5), 2, keep_best=False)  # fairseq: the first K, whatever comes later
    assert [h.score for h in hyps] == [-1.0, -2.0]
    _add_finished(hyps, _hyp(-2.0), 2, keep_best=True)  # a tie does not replace (transformers: strictly better)
    assert [h.tokens for h in hyps] == [[3, EOS], [4, EOS]]
    _add_finished(hyps, _hyp(-1.5), 2, keep_best=True)  # better than the worst: replaces it
    assert [h.score for h in hyps] == [-1.0, -1.5]
    short = [_hyp(-1.0)]
    _add_finished(short, _hyp(-9.0), 2, keep_best=False)
    assert len(short) == 2


def test_done_rules_by_hand():
    hyps = [_hyp(-1.0), _hyp(-1.2)]  # worst finished score -1.2
    assert not _done(hyps[:1], 2, 0.0, 3, 1.0, "power", False)  # fewer than K finished
    assert _done(hyps, 2, 0.0, 3, 1.0, "gnmt", False)  # fairseq: K finished is enough
    assert _done(hyps, 2, 0.0, 3, 1.0, "power", True)  # early_stopping
    # power: done when best_alive / L ** alpha <= worst: -3.6 / 3 = -1.2 (a tie: done), -3.3 / 3 = -1.1 (not)
    assert _done(hyps, 2, -3.6, 3, 1.0, "power", False)
    assert not _done(hyps, 2, -3.3, 3, 1.0, "power", False)
    assert not _done(hyps, 2, -4.0, 3, 2.0, "power", False)  # -4 / 9 = -0.44 can still win


def test_force_eos_in_beam_search_hand_worked():
    """No EOS in the table; max_len = 2, K = 2, alpha = 0: step 1 keeps a 0.7 and b 0.3; step 2 is the last and
    every hypothesis ends with EOS at log-prob 0: "a EOS" log 0.7, "b EOS" log 0.3 (without force_eos the
    hypotheses "a a" 0.49 and "a b" 0.21 come back, with no EOS)."""
    table = {BOS: [E, E, E, 0.7, 0.3], 3: [E, E, E, 0.7, 0.3], 4: [E, E, E, 0.6, 0.4]}
    hyps = beam_search(TableModel(table), SRC, beam_size=2, max_len=2, bos_id=BOS, eos_id=EOS,
                       length_penalty_alpha=0.0, n_best=2, force_eos=True)[0]
    assert [h.tokens for h in hyps] == [[3, EOS], [4, EOS]]
    assert [h.log_prob for h in hyps] == pytest.approx([math.log(0.7), math.log(0.3)], abs=1e-6)
    plain = beam_search(TableModel(table), SRC, beam_size=2, max_len=2, bos_id=BOS, eos_id=EOS,
                        length_penalty_alpha=0.0, n_best=2)[0]
    assert [h.tokens for h in plain] == [[3, 3], [3, 4]]


def test_documented_defaults():
    """beam 4 rows per sentence, BOS 1 and EOS 2, max_len 128, one hypothesis back, the cache used and allocated
    once for BOS + max_len positions, EOS allowed at once, no forced EOS, banned ids' probability left in the sum."""
    never_ends = {BOS: [E, E, E, 0.6, 0.4], 3: [E, E, E, 0.5, 0.5], 4: [E, E, E, 0.5, 0.5]}
    model = TableModel(never_ends)
    hyps = beam_search(model, SRC)
    assert model.first_step == (4, [BOS] * 4)
    assert model.init_args == {"max_len": 129, "use_cache": True}
    assert len(hyps[0]) == 1 and len(hyps[0][0].tokens) == 128 and EOS not in hyps[0][0].tokens
    model = TableModel(never_ends)
    out = greedy(model, SRC, max_len=7, bos_id=BOS, eos_id=EOS)
    assert model.init_args == {"max_len": 8, "use_cache": True} and out.shape == (1, 7) and EOS not in out[0]
    # HAND_TABLE: EOS (0.4) first is the best single hypothesis; with a ban on "a", log-probs keep its mass
    best = beam_search(TableModel(HAND_TABLE), SRC)[0][0]
    assert best.tokens == [EOS]
    assert greedy(TableModel(HAND_TABLE), SRC, max_len=5, bos_id=BOS, eos_id=EOS).tolist() == [[EOS]]
    banned = beam_search(TableModel(HAND_TABLE), SRC, beam_size=1, banned=[3])[0][0]
    assert banned.tokens == [EOS] and banned.log_prob == pytest.approx(math.log(0.4), abs=1e-6)


def test_top_tokens_where_blocks_cannot_hold_the_k_best():
    """vocab 128 is 2 blocks of 64: fewer than 2 x width blocks, so torch.topk answers (the block search would
    need `width` blocks)."""
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(0))
    values, index = top_tokens(x, 8)
    assert torch.equal(values, x.topk(8, dim=-1).values) and torch.equal(x.gather(1, index), values)


def test_fast_argmax_takes_nan_as_the_maximum_like_torch():
    """torch.argmax returns the first NaN of a row; so must the block search, the last partial block included."""
    from attnlab.decoding.greedy import fast_argmax

    x = torch.zeros(4, 65)
    x[0, 64] = float("nan")  # only in the partial block
    x[1, 10], x[1, 64] = float("nan"), float("nan")  # in a full block first
    x[2, 64], x[2, 3] = float("nan"), 5.0
    x[3, 7] = 1.0
    assert fast_argmax(x).tolist() == x.argmax(dim=-1).tolist() == [64, 10, 64, 7]
    g = torch.Generator().manual_seed(0)
    y = torch.randn(50, 200, generator=g)
    y[torch.rand(50, 200, generator=g) < 0.01] = float("nan")
    assert torch.equal(fast_argmax(y), y.argmax(dim=-1))
