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


def test_numpy_lengths_of_a_large_corpus_every_example_once_under_budget():
    import numpy as np

    rng = np.random.default_rng(0)
    src = rng.integers(1, 120, size=200_000).astype(np.int32)  # WMT-like spread, and a few over the budget
    tgt = np.clip(src + rng.integers(-5, 6, size=src.size), 1, None).astype(np.int32)
    src[:3] = 5000
    sampler = TokenBatchSampler(src, tgt, max_tokens=4000, seed=3, max_sentences=64)
    longest = np.maximum(src, tgt)
    batches = [sampler.batch(k) for k in range(len(sampler))]
    seen = np.sort(np.concatenate(batches))
    assert np.array_equal(seen, np.arange(src.size))  # every example exactly once
    for b in batches:
        assert len(b) <= 64
        assert len(b) == 1 or longest[b].max() * len(b) <= 4000  # an over-long example alone in its batch
    assert sum(len(b) == 1 for b in batches if longest[b].max() > 4000) == 3
    padded = sum(int(longest[b].max()) * len(b) for b in batches)
    assert padded / longest.sum() < 1.02  # sorted by length: almost no padding
    assert [b.tolist() for b in batches[:5]] == list(sampler)[:5]


def test_epoch_order_changes_with_the_epoch_and_is_the_same_for_the_same_epoch():
    src, tgt = lengths(2000)
    a = TokenBatchSampler(src, tgt, 600, seed=9)
    epoch0 = list(a)
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch0 != epoch1 and sorted(map(sorted, epoch0)) != sorted(map(sorted, epoch1))  # new batches, new order
    b = TokenBatchSampler(src, tgt, 600, seed=9)
    b.set_epoch(1)
    assert [b.batch(k).tolist() for k in range(len(b))] == epoch1  # a resumed run finds the same k-th batch


def test_rank_shards_cover_the_epoch_and_are_disjoint():
    src, tgt = lengths(1000)
    full = TokenBatchSampler(src, tgt, 500, seed=4).all_batches()
    shards = [list(TokenBatchSampler(src, tgt, 500, seed=4, num_replicas=4, rank=r)) for r in range(4)]
    assert len({len(s) for s in shards}) == 1  # equally long
    pad = len(shards[0]) * 4 - len(full)
    flat = [tuple(b) for s in shards for b in s]
    assert sorted(flat) == sorted([tuple(b) for b in full] + [tuple(b) for b in full[:pad]])
    owned = [{i for b in s for i in b} for s in shards]
    if pad == 0:
        assert all(not (owned[i] & owned[j]) for i in range(4) for j in range(i + 1, 4))
