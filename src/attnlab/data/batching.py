"""Batches by token count with length bucketing: little padding, shuffled, deterministic with a seed.

Examples are (source ids + EOS, BOS + target ids + EOS). A `Batch` is built once per batch:
src (B, S), tgt_in = BOS ... (B, T), tgt_out = ... EOS (B, T), right-padded with pad_id. Masks are
built by the model from pad_id (bool, True = may attend); `Batch.src_mask` gives the same mask.

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

Example = tuple[list[int], list[int]]


def encode_pairs(pairs: Sequence[tuple[str, str]], tokenizers: Any, max_len: int | None = None) -> list[Example]:
    """Tokenise (source, target) text pairs into (src ids + EOS, BOS + tgt ids + EOS)."""
    src_tok, tgt_tok = tokenizers.src, tokenizers.tgt
    srcs = src_tok.encode_batch([s for s, _ in pairs])
    tgts = tgt_tok.encode_batch([t for _, t in pairs])
    out, truncated = [], 0
    for s, t in zip(srcs, tgts):
        if max_len is not None and (len(s) + 1 > max_len or len(t) + 2 > max_len):
            truncated += 1
            s, t = s[: max_len - 1], t[: max_len - 2]
        out.append((s + [src_tok.eos_id], [tgt_tok.bos_id] + t + [tgt_tok.eos_id]))
    if truncated:
        warnings.warn(f"{truncated} of {len(pairs)} examples were longer than {max_len} tokens and truncated",
                      stacklevel=2)
    return out


@dataclass
class Batch:
    src: Any  # (B, S) int64, or images (B, 3, H, W) for captioning
    tgt_in: Tensor  # (B, T): BOS y1 ... y_{n}
    tgt_out: Tensor  # (B, T): y1 ... y_n EOS
    n_tokens: int  # real (non-pad) target tokens
    pad_id: int = 0

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.src.to(device, non_blocking=True), self.tgt_in.to(device, non_blocking=True),
                     self.tgt_out.to(device, non_blocking=True), self.n_tokens, self.pad_id)

    @property
    def src_mask(self) -> Tensor:
        return (self.src != self.pad_id)[:, None, None, :]


def pad_to_tensor(seqs: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def collate(examples: Sequence[Example], pad_id: int = 0) -> Batch:
    if not examples:
        raise ValueError("cannot collate an empty batch")
    src = pad_to_tensor([s for s, _ in examples], pad_id)
    tgt = pad_to_tensor([t for _, t in examples], pad_id)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    return Batch(src, tgt_in, tgt_out, int((tgt_out != pad_id).sum()), pad_id)


class TokenBatchSampler:
    """Yields lists of example indices whose padded size (batch x longest) stays under max_tokens.

    Works on numpy arrays of lengths, never Python lists of the corpus, so a corpus of millions of pairs costs a
    few bytes per example. Bucketing: examples sorted by length (ties broken at random); each length's examples
    cut into full batches (vectorised, no padding), the few left over cut greedily; then the order of the
    batches is shuffled by (seed, epoch). An example longer than max_tokens gets a batch of its own. With num_replicas > 1 each rank
    gets a disjoint, equal-length share of the batches (the last batches are repeated if needed, as
    DistributedSampler does). `batch(k)` is the k-th batch of this rank in the current epoch.
    """

    def __init__(self, src_lengths: Sequence[int] | np.ndarray, tgt_lengths: Sequence[int] | np.ndarray,
                 max_tokens: int, shuffle: bool = True, seed: int = 0, bucket: bool = True, num_replicas: int = 1,
                 rank: int = 0, max_sentences: int = 0):
        src, tgt = np.asarray(src_lengths), np.asarray(tgt_lengths)
        if src.shape != tgt.shape:
            raise ValueError("src_lengths and tgt_lengths differ in length")
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.lengths = np.maximum(src, tgt).astype(np.int32, copy=False)  # (N,)
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.bucket = bucket
        self.num_replicas = num_replicas
        self.rank = rank
        self.max_sentences = max_sentences
        self.epoch = 0
        self._cache: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None  # epoch, order, starts, batch order

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, salt])

    def _order(self) -> np.ndarray:
        """Example indices in the order batches are cut from, (N,) int32 (int64 above 2^31 examples)."""
        n = len(self.lengths)
        index_dtype = np.int32 if n < 2**31 else np.int64
        if not self.shuffle:
            return (np.argsort(self.lengths, kind="stable") if self.bucket else np.arange(n)).astype(index_dtype)
        key = self.lengths.astype(np.uint64) if self.bucket else np.zeros(n, np.uint64)  # (N,)
        key <<= np.uint64(32)  # one sort key: the length, then a random tie-break (in place: 8 bytes an example)
        key |= self._rng(0).integers(0, 2**32, size=n, dtype=np.uint32)
        sorted_idx = np.argsort(key)
        del key
        return sorted_idx.astype(index_dtype)

    def _cut(self, sorted_lengths: np.ndarray) -> np.ndarray:
        """Batch start positions in ascending lengths: one step per batch, a search in a window of the next
        max_tokens // shortest examples. Returns (n_batches + 1,) with the end appended."""
        n, budget, cap = len(sorted_lengths), self.max_tokens, self.max_sentences
        starts, i = [], 0
        while i < n:
            window = max(1, budget // max(int(sorted_lengths[i]), 1))
            if cap:
                window = min(window, cap)
            cost = sorted_lengths[i:i + window].astype(np.int64) * np.arange(1, min(window, n - i) + 1)
            starts.append(i)
            i += max(1, int(np.searchsorted(cost, budget, side="right")))
        return np.array(starts + [n], dtype=np.int64)

    def _bucket(self, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Batches of examples sorted by length, vectorised: each length's examples in full batches of
        max_tokens // length (no padding), then the few left over from every length (fewer than one batch
        each) cut greedily by `_cut`. Returns the reordered indices and the batch bounds into them."""
        ordered = self.lengths[order]  # (N,) ascending
        starts = np.concatenate([[0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1])  # each distinct length's run
        values, counts = ordered[starts], np.diff(np.append(starts, len(ordered)))
        size = np.maximum(1, self.max_tokens // np.maximum(values.astype(np.int64), 1))
        if self.max_sentences:
            size = np.minimum(size, self.max_sentences)
        n_full = counts // size  # full batches of each length
        rest = counts - n_full * size
        left = np.zeros(len(order), dtype=bool)  # the left-over examples: the tail of each length's run
        tails = np.repeat(starts + n_full * size, rest) + np.arange(rest.sum()) - np.repeat(np.cumsum(rest) - rest, rest)
        left[tails] = True
        full_sizes = np.repeat(size, n_full)
        bounds = np.concatenate([[0], np.cumsum(full_sizes)])
        tail_bounds = self._cut(ordered[left]) + bounds[-1]
        return np.concatenate([order[~left], order[left]]), np.concatenate([bounds[:-1], tail_bounds])

    def _cut_unsorted(self, lengths: np.ndarray) -> np.ndarray:
        starts, longest, count = [0], 0, 0
        for pos, n in enumerate(lengths.tolist()):
            new_longest = max(longest, n)
            full = self.max_sentences and count >= self.max_sentences
            if count and (new_longest * (count + 1) > self.max_tokens or full):
                starts.append(pos)
                count, new_longest = 0, n
            count += 1
            longest = new_longest
        return np.array(starts + [len(lengths)], dtype=np.int64)

    def _epoch_plan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = None  # the previous epoch's arrays go before this epoch's are made
            order = self._order()
            if self.bucket:
                order, bounds = self._bucket(order)
            else:
                bounds = self._cut_unsorted(self.lengths[order])
            n_batches = len(bounds) - 1
            batch_order = self._rng(1).permutation(n_batches) if self.shuffle else np.arange(n_batches)
            if self.num_replicas > 1:  # pad to a multiple of the ranks, then every num_replicas-th batch
                per_rank = -(-n_batches // self.num_replicas)
                batch_order = np.resize(batch_order, per_rank * self.num_replicas)[self.rank::self.num_replicas]
            self._cache = (self.epoch, order, bounds, batch_order)
        return self._cache[1], self._cache[2], self._cache[3]

    def batch(self, k: int) -> np.ndarray:
        order, bounds, batch_order = self._epoch_plan()
        b = batch_order[k]
        return order[bounds[b]:bounds[b + 1]]

    def all_batches(self) -> list[list[int]]:
        """Every batch of the epoch, before the split across ranks (small corpora and tests)."""
        order, bounds, _ = self._epoch_plan()
        batch_order = self._rng(1).permutation(len(bounds) - 1) if self.shuffle else np.arange(len(bounds) - 1)
        return [order[bounds[b]:bounds[b + 1]].tolist() for b in batch_order]

    def __iter__(self) -> Iterator[list[int]]:
        return (self.batch(k).tolist() for k in range(len(self)))

    def __len__(self) -> int:
        return len(self._epoch_plan()[2])
