"""Batches by token count with length bucketing: little padding, shuffled, deterministic with a seed.

Examples are (source ids + EOS, BOS + target ids + EOS). A `Batch` is built once per batch:
src (B, S), tgt_in = BOS ... (B, T), tgt_out = ... EOS (B, T), right-padded with pad_id. Masks are
built by the model from pad_id (bool, True = may attend); `Batch.src_mask` gives the same mask.
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

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

    Bucketing: shuffle, cut into chunks of ~100 batches, sort each chunk by length, make batches, then
    shuffle the order of the batches. An example longer than max_tokens gets a batch of its own.
    With num_replicas > 1 each rank gets a disjoint, equal-length share of the batches (the last
    batches are repeated if needed, as DistributedSampler does).
    """

    def __init__(self, src_lengths: Sequence[int], tgt_lengths: Sequence[int], max_tokens: int,
                 shuffle: bool = True, seed: int = 0, bucket: bool = True, num_replicas: int = 1, rank: int = 0,
                 max_sentences: int = 0):
        if len(src_lengths) != len(tgt_lengths):
            raise ValueError("src_lengths and tgt_lengths differ in length")
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.lengths = [max(s, t) for s, t in zip(src_lengths, tgt_lengths)]
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.bucket = bucket
        self.num_replicas = num_replicas
        self.rank = rank
        self.max_sentences = max_sentences
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _make_batches(self, order: list[int]) -> list[list[int]]:
        batches, current, longest = [], [], 0
        for i in order:
            n = self.lengths[i]
            new_longest = max(longest, n)
            too_many = self.max_sentences and len(current) >= self.max_sentences
            if current and (new_longest * (len(current) + 1) > self.max_tokens or too_many):
                batches.append(current)
                current, new_longest = [], n
            current.append(i)
            longest = new_longest
        if current:
            batches.append(current)
        return batches

    def all_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        if self.bucket:
            approx = max(1, self.max_tokens // max(1, int(sum(self.lengths) / max(len(self.lengths), 1))))
            chunk = max(approx * 100, 1)
            batches = []
            for start in range(0, len(order), chunk):
                part = sorted(order[start:start + chunk], key=lambda i: self.lengths[i])
                batches.extend(self._make_batches(part))
        else:
            batches = self._make_batches(order)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.all_batches()
        if self.num_replicas > 1:
            per_rank = -(-len(batches) // self.num_replicas)
            batches = batches + batches[: per_rank * self.num_replicas - len(batches)]
            batches = batches[self.rank::self.num_replicas]
        return iter(batches)

    def __len__(self) -> int:
        n = len(self.all_batches())
        return -(-n // self.num_replicas)
