"""Parallel text as streams: line-aligned files (.gz ok) and TSV read a block at a time, never whole, and a
seeded reservoir sample of a stream of unknown length (a tokenizer's training sample).

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

from attnlab.data.corpora import open_text

Pair = tuple[str, str]
T = TypeVar("T")


def stream_lines(path: str | Path, block_chars: int = 1 << 22) -> Iterator[str]:
    """The lines of a UTF-8 text file (.gz ok) one at a time, split at "\\n" only and without "\\r\\n" endings:
    the lines `corpora.read_lines` gives, read a block at a time."""
    with open_text(path) as f:
        rest = ""
        while block := f.read(block_chars):
            lines = (rest + block).split("\n")
            rest = lines.pop()
            for line in lines:
                yield line.rstrip("\r")
        if rest:
            yield rest.rstrip("\r")


@dataclass
class PairSource:
    """Where one split's pairs come from: two line-aligned files, a TSV (source<TAB>target), or a list."""

    src: str | None = None
    tgt: str | None = None
    tsv: str | None = None
    pairs: list[Pair] | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[Pair]:
        if self.tsv:
            return _tsv_pairs(Path(self.tsv))
        if self.src and self.tgt:
            return _aligned(Path(self.src), Path(self.tgt))
        return iter(self.pairs or [])

    def fingerprint(self) -> Any:
        """What identifies the data (paths, sizes, modification times; a list's contents' hash)."""
        if self.pairs is not None and not (self.tsv or self.src):
            import hashlib

            h = hashlib.sha256()
            for s, t in self.pairs:
                h.update(s.encode("utf-8", "surrogatepass") + b"\t" + t.encode("utf-8", "surrogatepass") + b"\n")
            return {"pairs": len(self.pairs), "sha256": h.hexdigest()}
        files = [self.tsv] if self.tsv else [self.src, self.tgt]
        out = []
        for name in files:
            path = Path(str(name)).resolve()
            if not path.is_file():
                raise FileNotFoundError(f"data file {path} not found")
            st = path.stat()
            out.append([str(path), st.st_size, st.st_mtime_ns])
        return out


@dataclass
class ChainedSource:
    """Several sources read one after the other (WMT14's training data is three corpora)."""

    parts: list[PairSource]

    def __iter__(self) -> Iterator[Pair]:
        return (pair for part in self.parts for pair in part)

    def fingerprint(self) -> Any:
        return [part.fingerprint() for part in self.parts]


def _aligned(src: Path, tgt: Path) -> Iterator[Pair]:
    n = 0
    sentinel = object()
    src_lines, tgt_lines = stream_lines(src), stream_lines(tgt)
    for s in src_lines:
        t = next(tgt_lines, sentinel)
        if t is sentinel:
            raise ValueError(f"{src} has more lines than {tgt} ({n}): files are not line-aligned")
        n += 1
        yield s, t  # type: ignore[misc]
    if next(tgt_lines, sentinel) is not sentinel:
        raise ValueError(f"{tgt} has more lines than {src} ({n}): files are not line-aligned")


def _tsv_pairs(path: Path, src_col: int = 0, tgt_col: int = 1) -> Iterator[Pair]:
    for n, line in enumerate(stream_lines(path), start=1):
        if not line.strip():
            continue
        cols = next(csv.reader([line], delimiter="\t", quoting=csv.QUOTE_NONE))
        if max(src_col, tgt_col) >= len(cols):
            raise ValueError(f"{path}:{n}: expected at least {max(src_col, tgt_col) + 1} tab-separated columns, got {len(cols)}")
        yield cols[src_col], cols[tgt_col]


def reservoir_sample(items: Iterable[T], k: int, seed: int) -> tuple[list[tuple[int, T]], int]:
    """A uniform sample of k items (with their positions) from a stream of unknown length, and the length.
    Li's Algorithm L: the random numbers drawn grow with k log(n / k), not with n."""
    rng = random.Random(seed)
    sample: list[tuple[int, T]] = []
    n = 0
    it = iter(items)
    for item in it:
        sample.append((n, item))
        n += 1
        if len(sample) >= k:
            break
    if k <= 0 or len(sample) < k:
        return (sample if k > 0 else []), n + sum(1 for _ in it)
    w = math.exp(math.log(rng.random()) / k)
    skip = math.floor(math.log(rng.random()) / math.log1p(-w))
    for item in it:
        if skip:
            skip -= 1
        else:
            sample[rng.randrange(k)] = (n, item)
            w *= math.exp(math.log(rng.random()) / k)
            skip = math.floor(math.log(rng.random()) / math.log1p(-w))
        n += 1
    return sorted(sample, key=lambda x: x[0]), n
