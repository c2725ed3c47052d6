"""Token-count batching with length bucketing, collation, DDP shards."""
import random

import pytest
import torch

from attnlab.data.batching import TokenBatchSampler, collate, encode_pairs


def lengths(n=3000, seed=0):
    rng = random.Random(seed)  # Multi30k-like: 5..40 tokens, mean ~15
    src = [max(3, min(40, int(rng.gauss(15, 6)))) for _ in range(n)]
    tgt = [max(3, min(40, s + rng.randint(-3, 3))) for s in src]
    return src, tgt


def padding_fraction(sampler, src, tgt):
    padded = real = 0
    for batch in sampler:
        width = max(max(src[i], tgt[i]) for i in batch)
        padded += width * len(batch)
        real += sum(max(src[i], tgt[i]) for i in batch)
    return 1 - real / padded


def test_every_example_once_per_epoch_and_under_the_token_limit():
    src, tgt = lengths()
    sampler = TokenBatchSampler(src, tgt, max_tokens=1000, seed=1)
    seen = sorted(i for b in sampler for i in b)
    assert seen == list(range(len(src)))
    for b in sampler:
        assert max(max(src[i], tgt[i]) for i in b) * len(b) <= 1000


def test_bucketing_cuts_padding():
    src, tgt = lengths()
    bucketed = padding_fraction(TokenBatchSampler(src, tgt, 1000, seed=1), src, tgt)
    plain = padding_fraction(TokenBatchSampler(src, tgt, 1000, seed=1, bucket=False), src, tgt)
    assert bucketed < 0.05 < 0.3 < plain


def test_deterministic_per_seed_and_epoch():
    src, tgt = lengths(500)
    a, b = TokenBatchSampler(src, tgt, 800, seed=5), TokenBatchSampler(src, tgt, 800, seed=5)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)


def test_overlong_example_gets_its_own_batch():
    sampler = TokenBatchSampler([5, 500, 6], [5, 500, 6], max_tokens=100, shuffle=False)
    assert sorted(map(sorted, sampler)) == [[0, 2], [1]]


def test_shards_are_disjoint_and_equal():
    src, tgt = lengths(1001)
    shards = [list(TokenBatchSampler(src, tgt, 700, seed=2, num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    full = list(TokenBatchSampler(src, tgt, 700, seed=2))
    flat = [tuple(b) for s in shards for b in s]
    assert set(flat) == {tuple(b) for b in full}
    with pytest.raises(ValueError, match="rank 3"):
        TokenBatchSampler(src, tgt, 700, num_replicas=3, rank=3)


def test_collate_shapes_and_token_count():
    batch = collate([([5, 6, 2], [1, 7, 8, 2]), ([5, 2], [1, 9, 2])], pad_id=0)
    assert batch.src.tolist() == [[5, 6, 2], [5, 2, 0]]
    # the shorter row feeds its EOS at a position whose label is padding: ignored by the loss
    assert batch.tgt_in.tolist() == [[1, 7, 8], [1, 9, 2]]
    assert batch.tgt_out.tolist() == [[7, 8, 2], [9, 2, 0]]
    assert batch.n_tokens == 5
    assert batch.src_mask.shape == (2, 1, 1, 3) and batch.src_mask.dtype == torch.bool


def test_encode_pairs_adds_eos_and_bos_and_warns_on_truncation():
    class Tok:
        bos_id, eos_id = 1, 2

        def encode_batch(self, texts):
            return [[10 + len(w) for w in t.split()] for t in texts]

    class Pair:
        src = tgt = Tok()

    out = encode_pairs([("a bb", "ccc")], Pair())
    assert out == [([11, 12, 2], [1, 13, 2])]
    with pytest.warns(UserWarning, match="1 of 1 examples"):
        out = encode_pairs([("a b c d e", "a b c d e")], Pair(), max_len=4)
    assert out == [([11, 11, 11, 2], [1, 11, 11, 2])]
