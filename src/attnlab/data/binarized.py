"""A binarized parallel corpus (fairseq's `indexed_dataset` / Megatron's `.bin` + `.idx`), read through numpy memmap.

Per split and side (`train.src`, `train.tgt`, `valid.src`, ...):

- `{split}.{side}.bin`: the token ids of every sentence, back to back, without BOS/EOS, in the smallest dtype
  that holds the vocabulary (uint16 below 65,536 ids, else int32);
- `{split}.{side}.idx`: a 24-byte header (magic, dtype code, count N), then N + 1 int64 offsets into the .bin
  (in tokens) and N int32 lengths.

`manifest.json` (written last: a dataset without it is incomplete) holds the counts, each file's size and
sha256, and the tokenizer's fingerprint. Opening checks sizes and the tokenizer (cheap; a truncated or foreign
dataset is a one-line error); `verify=True` also checks every sha256. Nothing of the corpus is read into
Python objects. A batch is read with positioned reads (`os.pread`: one for a sentence's offsets, one for its
ids), not through the memmaps: a page touched through a map counts in the process's resident memory, and the
kernel maps its cached neighbours with it (measured: ~30 MB resident per batch of 45 sentences of a 4.5M-pair
corpus, despite MADV_RANDOM), while a read copies only the bytes asked for.

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
    """One side of one split: `ids(i)`, `padded(idx, ...)` and `lengths` (N,) without reading the .bin into memory.

    `lengths`, `offsets` and `data` are memmaps (for bulk reads: tests, tools); batches are read with
    `os.pread` (the module docstring says why). `read_lengths()` reads all lengths into an array with file
    reads. `release()` drops pages of the maps from this process's page tables (MADV_DONTNEED; for a file
    they stay in the page cache)."""

    def __init__(self, prefix: Path):
        index = read_index(Path(f"{prefix}.idx"))
        self.offsets, self.lengths, self.dtype = index["offsets"], index["lengths"], index["dtype"]
        self.idx_path, self.bin_path = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
        n_tokens = int(self.offsets[-1])
        if not self.bin_path.is_file() or self.bin_path.stat().st_size != n_tokens * self.dtype.itemsize:
            raise DatasetError(f"{self.bin_path} is missing or truncated (its index lists {n_tokens} tokens)")
        # an empty file cannot be memmapped
        self.data = np.memmap(self.bin_path, dtype=self.dtype, mode="r") if n_tokens else np.zeros(0, self.dtype)
        for array in (self.offsets, self.lengths, self.data):
            _advise(array, mmap.MADV_RANDOM)
        self._fds: tuple[int, int, int] | None = None  # (pid, idx fd, bin fd): reopened in a forked process
        self.release()

    def release(self) -> None:
        for array in (self.offsets, self.lengths, self.data):
            _advise(array, mmap.MADV_DONTNEED)

    def __len__(self) -> int:
        return len(self.lengths)

    def read_lengths(self) -> np.ndarray:
        """(N,) int32 lengths, read from the file (nothing of it stays mapped)."""
        with open(self.idx_path, "rb") as f:
            return np.fromfile(f, dtype="<i4", count=len(self), offset=_HEADER + 8 * (len(self) + 1)).astype(np.int32)

    def _open(self) -> tuple[int, int]:
        if self._fds is None or self._fds[0] != os.getpid():
            self._fds = (os.getpid(), os.open(self.idx_path, os.O_RDONLY), os.open(self.bin_path, os.O_RDONLY))
        return self._fds[1], self._fds[2]

    def __del__(self) -> None:
        if getattr(self, "_fds", None) is not None and self._fds[0] == os.getpid():
            for fd in self._fds[1:]:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _read(self, fd: int, size: int, at: int) -> bytes:
        data = os.pread(fd, size, at)
        if len(data) != size:
            raise DatasetError(f"{self.bin_path.parent}: a read past the end of a file: the dataset was truncated")
        return data

    def spans(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B,) start offsets (in tokens) and lengths of the sentences `idx`."""
        idx_fd, _ = self._open()
        if len(idx) and not (0 <= int(idx.min()) and int(idx.max()) < len(self)):
            raise IndexError(f"sentence index out of range 0..{len(self) - 1}")
        raw = b"".join(self._read(idx_fd, 16, _HEADER + 8 * i) for i in idx.tolist())
        bounds = np.frombuffer(raw, dtype="<i8").reshape(-1, 2)  # (B, 2): offsets[i], offsets[i + 1]
        return bounds[:, 0], bounds[:, 1] - bounds[:, 0]

    def read_ids(self, start: np.ndarray, length: np.ndarray) -> np.ndarray:
        """The ids of the given spans back to back (in the file's dtype)."""
        _, bin_fd = self._open()
        size = self.dtype.itemsize
        raw = b"".join(self._read(bin_fd, n * size, a * size) for a, n in zip(start.tolist(), length.tolist()) if n)
        return np.frombuffer(raw, dtype=self.dtype.newbyteorder("<"))

    def ids(self, i: int) -> np.ndarray:
        start, length = self.spans(np.array([i]))
        return self.read_ids(start, length).copy()

    def padded(self, idx: np.ndarray, lead: int, tail: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, lead + longest + tail) int64 rows: `lead` BOS, the ids, `tail` EOS, then pad_id; and the lengths."""
        start, length = self.spans(idx)  # (B,)
        width = int(length.max(initial=0)) + lead + tail
        col = np.arange(width, dtype=np.int64)[None, :] - lead  # (1, W): position within the sentence
        inside = (col >= 0) & (col < length[:, None])  # (B, W)
        out = np.full((len(idx), width), pad_id, dtype=np.int64)
        out[inside] = self.read_ids(start, length)  # row-major: each row's ids in order
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
        src = self.src.read_lengths()
        src += np.int32(1)
        tgt = self.tgt.read_lengths()
        tgt += np.int32(2)
        return src, tgt

    def batch(self, indices: Any, pad_id: int) -> Batch:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            raise ValueError("cannot collate an empty batch")
        src, _ = self.src.padded(idx, 0, 1, pad_id)  # (B, S)
        tgt, _ = self.tgt.padded(idx, 1, 1, pad_id)  # (B, T + 1)
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
