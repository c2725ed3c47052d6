"""BLEU-1..4 for captions with several references each, against hand-worked counts (Papineni et al. 2002)."""
import math

import pytest

from attnlab.metrics.caption_bleu import corpus_bleu_multi

HYPS = ["the cat sat on the mat", "A dog runs in the park"]
REFS = [["the cat is on the mat", "there is a cat on the mat"], ["a dog runs in a park", "the dog is running"]]


def test_bleu_1_to_4_by_hand():
    # clipped n-gram matches / hypothesis n-grams, summed over the corpus (each n-gram clipped by its
    # largest count in any one reference):
    #   1-grams: (5 + 6) / 12   ("sat" unmatched; "the" twice, as in reference 1 of caption 1)
    #   2-grams: (3 + 3) / 10   ("the cat", "on the", "the mat"; "a dog", "dog runs", "runs in")
    #   3-grams: (1 + 2) / 8    ("on the mat"; "a dog runs", "dog runs in")
    #   4-grams: (0 + 1) / 6    ("a dog runs in")
    # hypothesis length 12 = the closest reference lengths 6 + 6: brevity penalty 1
    p = [11 / 12, 6 / 10, 3 / 8, 1 / 6]
    scores = corpus_bleu_multi(HYPS, REFS)
    for n in range(1, 5):
        expected = 100 * math.exp(sum(math.log(x) for x in p[:n]) / n)
        assert scores[f"bleu{n}"] == pytest.approx(expected, abs=1e-6), n
    assert scores["bleu4"] == pytest.approx(43.058, abs=1e-3)


def test_brevity_penalty_uses_the_closest_reference():
    # "the cat": with a 2-word reference there is no penalty; with only the 6-word one it is exp(1 - 6/2)
    assert corpus_bleu_multi(["the cat"], [["the cat is on the mat", "a cat"]])["bleu1"] == pytest.approx(100.0)
    assert corpus_bleu_multi(["the cat"], [["the cat is on the mat"]])["bleu1"] == pytest.approx(100 * math.exp(-2))


def test_a_reference_more_only_helps_and_counts_may_differ_per_image():
    one = corpus_bleu_multi(HYPS, [refs[:1] for refs in REFS])
    both = corpus_bleu_multi(HYPS, REFS)
    assert all(both[k] >= one[k] for k in one) and both["bleu1"] > one["bleu1"]
    uneven = corpus_bleu_multi(HYPS, [REFS[0], REFS[1][:1]])  # 2 references, then 1
    assert uneven["bleu1"] == pytest.approx(100 * 10 / 12)  # caption 2 loses "the" (only in its 2nd reference)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="2 captions but 1 reference lists"):
        corpus_bleu_multi(HYPS, REFS[:1])
    with pytest.raises(ValueError, match="at least one reference"):
        corpus_bleu_multi(HYPS, [REFS[0], []])
    with pytest.raises(ValueError, match="no captions"):
        corpus_bleu_multi([], [])
