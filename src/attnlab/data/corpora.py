"""Parallel corpora from plain line-aligned text (optionally gzipped) and TSV files.

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import contextlib
import csv
import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, TextIO

Pair = tuple[str, str]


@dataclass
class ParallelCorpus:
    name: str
    src_lang: str
    tgt_lang: str
    train: list[Pair] = field(default_factory=list)
    valid: list[Pair] = field(default_factory=list)
    test: list[Pair] = field(default_factory=list)


@contextlib.contextmanager
def open_text(path: str | Path) -> Iterator[TextIO]:
    """A UTF-8 text file (.gz ok) opened without newline translation; a missing file is FileNotFoundError,
    bytes that are not UTF-8 or an unreadable file one-line ValueErrors naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            yield f
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text: {err.reason} at byte {err.start}") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None


def read_lines(path: str | Path) -> list[str]:
    """All lines of a UTF-8 text file (.gz ok), without their line endings; empty lines kept as ""."""
    with open_text(path) as f:
        return split_lines(f.read())


def split_lines(text: str) -> list[str]:
    """Lines split at "\n" only (a stray "\r" or U+2028 inside a line does not cut it), "\r\n" endings removed."""
    lines = text.split("\n")
    if lines and lines[-1] == "":  # the final newline ends the last line, it does not start a new one
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> list[Pair]:
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise ValueError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: files are not line-aligned")
    return list(zip(src, tgt))


def read_tsv(path: str | Path, src_col: int = 0, tgt_col: int = 1) -> list[Pair]:
    path = Path(path)
    pairs = []
    for n, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        cols = next(csv.reader([line], delimiter="\t", quoting=csv.QUOTE_NONE))
        if max(src_col, tgt_col) >= len(cols):
            raise ValueError(f"{path}:{n}: expected at least {max(src_col, tgt_col) + 1} tab-separated columns, got {len(cols)}")
        pairs.append((cols[src_col], cols[tgt_col]))
    return pairs
