"""A binarized parallel corpus (fairseq's `indexed_dataset` / Megatron's `.bin` + `.idx`), read through numpy memmap.

Per split and side (`train.src`, `train.tgt`, `valid.src`, ...):

- `{split}.{side}.bin`: the token ids of every sentence, back to back, without BOS/EOS, in the smallest dtype
  that holds the vocabulary (uint16 below 65,536 ids, else int32);
- `{split}.{side}.idx`: a 24-byte header (magic, dtype code, count N), then N + 1 int64 offsets into the .bin
  (in tokens) and N int32 lengths.

`manifest.json` (written last: a dataset without it is incomplete) holds the counts, each file's size and
sha256, and the tokenizer's fingerprint. Opening checks sizes and the tokenizer (cheap; a truncated or foreign
dataset is a one-line error); `verify=True` also checks every sha256. Nothing of the corpus is read into
Python objects: a batch is gathered from the memmap with one fancy index.

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import json
import mmap
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnlab.data.batching import Batch
from attnlab.data.tokenizer import BOS_ID, EOS_ID
from attnlab.io import sha256

MAGIC = b"ATNLIDX1"
FORMAT = 1
_DTYPES = {1: np.dtype(np.uint16), 2: np.dtype(np.int32)}
_CODES = {v: k for k, v in _DTYPES.items()}
_HEADER = 24  # magic (8) + dtype code (8, uint64) + count (8, uint64)


class DatasetError(ValueError):
    """A prepared dataset that is incomplete, truncated, corrupt or made with another tokenizer."""


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype for ids below vocab_size: uint16 below 65,536, else int32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


class IndexedWriter:
    """Appends sentences (ids back to back + their lengths) to `{prefix}.bin` / `{prefix}.idx`, written under
    temporary names and renamed into place by `finish()` (the .idx last), so a kill leaves no half dataset."""

    def __init__(self, prefix: Path, dtype: np.dtype):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp_bin = tempfile.mkstemp(dir=self.prefix.parent, prefix=f".{self.prefix.name}.bin.")
        self._bin = os.fdopen(fd, "wb")
        self._lengths: list[np.ndarray] = []  # one array per append (a chunk of ~50k sentences), not per sentence
        self.tokens = 0

    def append(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        ids = np.asarray(ids)
        if ids.size and (int(ids.max()) > np.iinfo(self.dtype).max or int(ids.min()) < 0):
            raise ValueError(f"token id out of range for {self.dtype}")
        if int(lengths.sum()) != ids.size:
            raise ValueError(f"lengths sum to {int(lengths.sum())} but {ids.size} ids were given")
        self._bin.write(ids.astype(self.dtype, copy=False).tobytes())
        self._lengths.append(np.asarray(lengths, dtype=np.int32))
        self.tokens += ids.size

    def append_file(self, prefix: Path) -> None:
        """Append another indexed pair of files (a chunk), block by block."""
        index = read_index(Path(f"{prefix}.idx"))
        with open(f"{prefix}.bin", "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                self._bin.write(block)
        self._lengths.append(np.asarray(index["lengths"], dtype=np.int32))
        self.tokens += int(index["offsets"][-1])

    def finish(self) -> dict[str, Any]:
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        header = MAGIC + np.array([_CODES[self.dtype], len(lengths)], dtype="<u8").tobytes()
        fd, tmp_idx = tempfile.mkstemp(dir=self.prefix.parent, prefix=f".{self.prefix.name}.idx.")
        with os.fdopen(fd, "wb") as f:
            f.write(header + offsets.astype("<i8").tobytes() + lengths.astype("<i4").tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(self._tmp_bin, f"{self.prefix}.bin")
        os.replace(tmp_idx, f"{self.prefix}.idx")
        return {"sentences": int(len(lengths)), "tokens": int(self.tokens)}

    def abort(self) -> None:
        self._bin.close()
        Path(self._tmp_bin).unlink(missing_ok=True)


def read_index(path: Path) -> dict[str, Any]:
    """The memmapped offsets (N + 1,) int64 and lengths (N,) int32 of an .idx file, and its ids dtype."""
    size = path.stat().st_size if path.is_file() else -1
    if size < _HEADER:
        raise DatasetError(f"{path} is missing or truncated")
    with open(path, "rb") as f:
        head = f.read(_HEADER)
    if head[:8] != MAGIC:
        raise DatasetError(f"{path} is not an attnlab index file")
    code, count = (int(x) for x in np.frombuffer(head[8:], dtype="<u8"))
    if code not in _DTYPES or size != _HEADER + 8 * (count + 1) + 4 * count:
        raise DatasetError(f"{path} is truncated or corrupt ({size} bytes for {count} sentences)")
    offsets = np.memmap(path, dtype="<i8", mode="r", offset=_HEADER, shape=(count + 1,))
    lengths = np.memmap(path, dtype="<i4", mode="r", offset=_HEADER + 8 * (count + 1), shape=(count,))
    return {"dtype": _DTYPES[code], "offsets": offsets, "lengths": lengths, "count": count}


def _advise(array: np.ndarray, advice: int) -> None:
    """madvise on the mapping under a memmap (nothing for a plain array, or where madvise is missing)."""
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise"):
        mapping.madvise(advice)


class IndexedSentences:
    """One side of one split: `ids(i)` and `lengths` (N,) without reading the .bin into memory.

    The maps are advised MADV_RANDOM (a batch touches scattered pages: no read-ahead around them), and
    `release()` drops the pages this process has touched from its page tables (MADV_DONTNEED; for a file they
    stay in the page cache): without it, a long run's resident memory would grow towards the size of the files."""

    def __init__(self, prefix: Path):
        index = read_index(Path(f"{prefix}.idx"))
        self.offsets, self.lengths, self.dtype = index["offsets"], index["lengths"], index["dtype"]
        bin_path = Path(f"{prefix}.bin")
        n_tokens = int(self.offsets[-1])
        if not bin_path.is_file() or bin_path.stat().st_size != n_tokens * self.dtype.itemsize:
            raise DatasetError(f"{bin_path} is missing or truncated (its index lists {n_tokens} tokens)")
        # an empty file cannot be memmapped
        self.data = np.memmap(bin_path, dtype=self.dtype, mode="r") if n_tokens else np.zeros(0, self.dtype)
        for array in (self.offsets, self.lengths, self.data):
            _advise(array, mmap.MADV_RANDOM)

    def release(self) -> None:
        for array in (self.offsets, self.lengths, self.data):
            _advise(array, mmap.MADV_DONTNEED)

    def __len__(self) -> int:
        return len(self.lengths)

    def ids(self, i: int) -> np.ndarray:
        return np.asarray(self.data[self.offsets[i]:self.offsets[i + 1]])

    def padded(self, idx: np.ndarray, lead: int, tail: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, lead + longest + tail) int64 rows: `lead` BOS, the ids, `tail` EOS, then pad_id; and the lengths."""
        start, length = self.offsets[idx], np.asarray(self.lengths[idx], dtype=np.int64)  # (B,)
        width = int(length.max(initial=0)) + lead + tail
        col = np.arange(width, dtype=np.int64)[None, :] - lead  # (1, W): position within the sentence
        inside = (col >= 0) & (col < length[:, None])  # (B, W)
        gather = np.where(inside, start[:, None] + col, 0)
        out = np.where(inside, self.data[gather] if len(self.data) else 0, pad_id).astype(np.int64)
        if lead:
            out[:, 0] = BOS_ID
        if tail:
            out[np.arange(len(idx)), length + lead] = EOS_ID
        return out, length


class BinarizedPairs:
    """A split of a prepared dataset as training examples: source ids + EOS, BOS + target ids + EOS.

    `example_lengths()` gives the sampler numpy arrays; `batch(indices, pad_id)` builds a `Batch` straight
    from the memmaps (what `collate` gives for the same examples); `[i]` gives one example as lists."""

    def __init__(self, directory: Path, split: str):
        self.src = IndexedSentences(Path(directory) / f"{split}.src")
        self.tgt = IndexedSentences(Path(directory) / f"{split}.tgt")
        if len(self.src) != len(self.tgt):
            raise DatasetError(f"{directory}: {split} has {len(self.src)} source but {len(self.tgt)} target sentences")

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return (self.src.ids(i).tolist() + [EOS_ID], [BOS_ID] + self.tgt.ids(i).tolist() + [EOS_ID])

    def example_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """(N,) source lengths with EOS and (N,) target lengths with BOS and EOS, int32."""
        lengths = self.src.lengths + np.int32(1), self.tgt.lengths + np.int32(2)
        self.src.release()
        self.tgt.release()
        return lengths

    def batch(self, indices: Any, pad_id: int) -> Batch:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            raise ValueError("cannot collate an empty batch")
        src, _ = self.src.padded(idx, 0, 1, pad_id)  # (B, S)
        tgt, _ = self.tgt.padded(idx, 1, 1, pad_id)  # (B, T + 1)
        self.src.release()
        self.tgt.release()
        tgt_t = torch.from_numpy(tgt)
        tgt_in, tgt_out = tgt_t[:, :-1], tgt_t[:, 1:]
        return Batch(torch.from_numpy(src), tgt_in, tgt_out, int((tgt_out != pad_id).sum()), pad_id)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    from attnlab.io import atomic_write_json

    atomic_write_json(Path(directory) / "manifest.json", manifest)


def file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256(path)}


def open_manifest(directory: str | Path, tokenizer_fingerprint: str | None = None,
                  verify: bool = False) -> dict[str, Any]:
    """The manifest of a complete dataset, checked: every file present with its size (and sha256 with
    verify=True), and made with the tokenizer of that fingerprint when one is given. One-line errors."""
    directory = Path(directory)
    path = directory / "manifest.json"
    if not path.is_file():
        raise DatasetError(f"{directory} holds no complete prepared dataset (no manifest.json; run attnlab prepare)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise DatasetError(f"{path} is corrupt (not JSON)") from None
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{path}: format {manifest.get('format')!r}, this attnlab reads format {FORMAT}")
    if tokenizer_fingerprint is not None and manifest.get("tokenizer_sha256") != tokenizer_fingerprint:
        raise DatasetError(f"{directory} was prepared with another tokenizer (sha256 {manifest.get('tokenizer_sha256', '?')[:12]}, "
                           f"this one is {tokenizer_fingerprint[:12]}); prepare it again with this tokenizer")
    for name, entry in manifest.get("files", {}).items():
        file = directory / name
        size = file.stat().st_size if file.is_file() else None
        if size != entry["bytes"]:
            raise DatasetError(f"{file} is {'missing' if size is None else f'{size} bytes'}, the manifest says "
                               f"{entry['bytes']}: the dataset is truncated or was changed; prepare it again")
        if verify and sha256(file) != entry["sha256"]:
            raise DatasetError(f"{file} does not match its sha256 in the manifest: the dataset is corrupt")
    return manifest
