"""Raw parallel text -> a binarized dataset (data/binarized.py), streamed, in parallel, resumable.

1. One pass over the training pairs counts them and draws a seeded reservoir sample (`tokenizer_sample`
   pairs) on which the subword tokenizer is trained; nothing else of the corpus is held.
2. The pairs are cut into chunks; worker processes encode a chunk each (HF tokenizers' `encode_batch`),
   clean it and write it as its own small binarized chunk. Cleaning drops a pair, never truncates it, and
   counts why: an empty side; a length ratio above `max_ratio` (in tokens, as Moses' clean-corpus-n);
   longer than `max_len` tokens with BOS/EOS.
3. The chunks are concatenated into `train.src.bin` / `.idx` and `train.tgt...`; validation and test pairs
   are encoded whole (no cleaning) and kept as text too, for BLEU. `manifest.json` comes last.

Killed at any point, a re-run with the same request resumes: the tokenizer and every finished chunk
(its `.json` is written after its files) are kept in `OUT/.work/`; a different request starts over.

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from attnlab.data.binarized import FORMAT, IndexedWriter, file_entry, ids_dtype, open_manifest, write_manifest
from attnlab.data.streams import Pair, PairSource, reservoir_sample
from attnlab.data.tokenizer import SubwordTokenizer, TokenizerPair

SPLITS = ("train", "valid", "test")
DROP_REASONS = ("empty", "ratio", "too_long")


@dataclass
class PrepareConfig:
    vocab_size: int = 8000
    joint: bool = True
    subword_model: str = "bpe"
    tokenizer_sample: int = 200_000  # training pairs the tokenizer learns from (a seeded uniform sample)
    max_len: int = 256  # pairs with a side longer than this many tokens (with BOS/EOS) are dropped
    max_ratio: float = 9.0  # pairs whose longer side has more than this many times the tokens of the other
    seed: int = 0
    workers: int = 0  # encoding processes; 0 = one per CPU core
    chunk_pairs: int = 50_000

    def request(self) -> dict[str, Any]:
        """What decides the output (workers and chunk size do not)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("workers",)}


@dataclass
class CorpusSources:
    train: PairSource
    valid: PairSource | None = None
    test: PairSource | None = None


# ---- encoding one chunk (in a worker process) ------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(src_json: str, tgt_json: str | None) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core; no thread pool inside each
    from tokenizers import Tokenizer

    src = WordCachedEncoder(SubwordTokenizer(Tokenizer.from_str(src_json)))
    _WORKER["src"] = src
    _WORKER["tgt"] = WordCachedEncoder(SubwordTokenizer(Tokenizer.from_str(tgt_json))) if tgt_json else src


class WordCachedEncoder:
    """`tok.encode_batch` with the ids of each space-separated word cached: the same ids (tested on Multi30k and
    on odd whitespace and Unicode), several times faster on a corpus, whose words repeat (Zipf).

    Why it is exact: the tokenizer normalises (NFKC, strip), then Metaspace splits at " " and marks each word's
    start with "▁", then punctuation is split off, and BPE never merges across those splits; so a sentence's ids
    are its words' ids, each word encoded alone. A sentence takes the word path only when nothing changes that:
    already NFKC, and single " " between words with no other whitespace anywhere (splitting at " " gives what
    str.split() gives, whose whitespace includes all of Unicode's White_Space). Others go to the tokenizer
    whole. Words are looked up in C (map over a dict) and their ids gathered with numpy; the cache is emptied
    when it holds `max_words` words, so memory stays bounded."""

    def __init__(self, tok: SubwordTokenizer, max_words: int = 500_000):
        self.tok = tok
        self.max_words = max_words
        self._reset()

    def _reset(self) -> None:
        self.index: dict[str, int] = {}  # word -> its row in the cache
        self.ids = np.zeros(0, np.int64)  # the cached words' ids back to back
        self.starts = np.zeros(0, np.int64)  # (words,) where each word's ids start in self.ids
        self.lengths = np.zeros(0, np.int64)  # (words,)

    def _add(self, words: list[str]) -> None:
        encoded = self.tok.encode_batch(words)
        lengths = np.fromiter(map(len, encoded), np.int64, count=len(words))
        self.index.update(zip(words, range(len(self.index), len(self.index) + len(words))))
        self.starts = np.concatenate([self.starts, len(self.ids) + np.cumsum(lengths) - lengths])
        self.lengths = np.concatenate([self.lengths, lengths])
        self.ids = np.concatenate([self.ids, np.fromiter(chain.from_iterable(encoded), np.int64, count=int(lengths.sum()))])

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids back to back (int64) and lengths (int32) of the sentences."""
        import unicodedata

        split = [text.split(" ") for text in texts]
        fast = np.fromiter((w == t.split() and unicodedata.is_normalized("NFKC", t) and t != ""
                            for w, t in zip(split, texts)), bool, count=len(texts))
        fast_words = [w for w, ok in zip(split, fast) if ok]
        words = list(chain.from_iterable(fast_words))
        if len(self.index) > self.max_words:
            self._reset()
        missing = list(set(words).difference(self.index))
        if missing:
            self._add(missing)
        rows = np.fromiter(map(self.index.__getitem__, words), np.int64, count=len(words))  # (W,)
        word_len = self.lengths[rows]  # (W,) tokens of each word
        n_words = np.fromiter(map(len, fast_words), np.int64, count=len(fast_words))  # (S_fast,)
        lengths = np.zeros(len(texts), np.int64)
        lengths[fast] = np.add.reduceat(word_len, np.cumsum(n_words) - n_words) if len(words) else 0
        slow = np.flatnonzero(~fast)
        slow_ids = self.tok.encode_batch([texts[i] for i in slow]) if len(slow) else []
        lengths[slow] = np.fromiter(map(len, slow_ids), np.int64, count=len(slow_ids))
        out = np.empty(int(lengths.sum()), np.int64)
        sent_start = np.cumsum(lengths) - lengths  # (S,) where each sentence starts in `out`
        # the fast sentences' tokens are their words' tokens in order: gather them, then place each sentence's
        total = int(word_len.sum())
        if total:
            within = np.arange(total) - np.repeat(np.cumsum(word_len) - word_len, word_len)
            tokens = self.ids[np.repeat(self.starts[rows], word_len) + within]
            fast_len = lengths[fast]
            out[np.repeat(sent_start[fast] - (np.cumsum(fast_len) - fast_len), fast_len) + np.arange(total)] = tokens
        for i, ids in zip(slow.tolist(), slow_ids):
            out[sent_start[i]:sent_start[i] + len(ids)] = ids
        return out, lengths.astype(np.int32)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        flat, lengths = self.encode_flat(texts)
        return [part.tolist() for part in np.split(flat, np.cumsum(lengths)[:-1])] if len(texts) else []


def encode_side(tok: SubwordTokenizer | WordCachedEncoder, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Ids back to back (int64) and lengths (int32) of a list of sentences."""
    if isinstance(tok, WordCachedEncoder):
        return tok.encode_flat(texts)
    ids = tok.encode_batch(texts)
    lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
    flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


def clean_mask(src_len: np.ndarray, tgt_len: np.ndarray, max_len: int, max_ratio: float) -> tuple[np.ndarray, dict[str, int]]:
    """Which pairs to keep, and how many were dropped for each reason (each pair counted once, first reason)."""
    s, t = src_len.astype(np.int64), tgt_len.astype(np.int64)
    empty = (s == 0) | (t == 0)
    ratio = ~empty & (np.maximum(s, t) > max_ratio * np.minimum(s, t))
    too_long = ~empty & ~ratio & ((s + 1 > max_len) | (t + 2 > max_len))
    counts = {"empty": int(empty.sum()), "ratio": int(ratio.sum()), "too_long": int(too_long.sum())}
    return ~(empty | ratio | too_long), counts


def _encode_chunk(work: str, name: str, srcs: list[str], tgts: list[str], dtype: str,
                  clean: tuple[int, float] | None) -> dict[str, Any]:
    src_ids, src_len = encode_side(_WORKER["src"], srcs)
    tgt_ids, tgt_len = encode_side(_WORKER["tgt"], tgts)
    counts = {"pairs": len(srcs), **{r: 0 for r in DROP_REASONS}}
    if clean is not None:
        keep, dropped = clean_mask(src_len, tgt_len, *clean)
        counts.update(dropped)
        src_ids, tgt_ids = src_ids[np.repeat(keep, src_len)], tgt_ids[np.repeat(keep, tgt_len)]
        src_len, tgt_len = src_len[keep], tgt_len[keep]
    for side, ids, lengths in (("src", src_ids, src_len), ("tgt", tgt_ids, tgt_len)):
        writer = IndexedWriter(Path(work) / f"{name}.{side}", np.dtype(dtype))
        writer.append(ids, lengths)
        writer.finish()
    counts["kept"] = int(len(src_len))
    from attnlab.io import atomic_write_json

    atomic_write_json(Path(work) / f"{name}.json", counts)  # last: the chunk is done
    return counts


# ---- the driver -------------------------------------------------------------------------------------------
def _chunks(pairs: Iterator[Pair], size: int) -> Iterator[tuple[list[str], list[str]]]:
    while block := list(islice(pairs, size)):
        yield [s for s, _ in block], [t for _, t in block]


class _Encoder:
    """Runs `_encode_chunk` in a pool of worker processes (at most 2 chunks in flight per worker, so memory
    stays bounded), or in this process when there is one worker."""

    def __init__(self, tokenizers: TokenizerPair, workers: int):
        args = (tokenizers.src.to_str(), None if tokenizers.joint else tokenizers.tgt.to_str())
        self.pool = None
        if workers > 1:
            self.pool = mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=args)
        else:
            _init_worker(*args)
        self.limit = 2 * max(workers, 1)
        self.pending: deque = deque()

    def submit(self, *args: Any) -> list[dict[str, Any]]:
        """Queue a chunk; returns the counts of chunks finished meanwhile (in order)."""
        if self.pool is None:
            return [_encode_chunk(*args)]
        self.pending.append(self.pool.apply_async(_encode_chunk, args))
        done = []
        while len(self.pending) >= self.limit or (self.pending and self.pending[0].ready()):
            done.append(self.pending.popleft().get())
        return done

    def drain(self) -> list[dict[str, Any]]:
        done = [p.get() for p in self.pending]
        self.pending.clear()
        return done

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _request(sources: CorpusSources, cfg: PrepareConfig, tokenizers: TokenizerPair | None) -> dict[str, Any]:
    return {"format": FORMAT, "config": cfg.request(),
            "sources": {split: (getattr(sources, split).fingerprint() if getattr(sources, split) is not None else None)
                        for split in SPLITS},
            "tokenizer": tokenizers.fingerprint() if tokenizers is not None else None}


def prepare_dataset(sources: CorpusSources, out: str | Path, cfg: PrepareConfig | None = None,
                    tokenizers: TokenizerPair | None = None,
                    log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Prepare (or resume, or find already prepared) the dataset of `sources` in `out`; returns its manifest.
    `tokenizers` given: used as they are (no tokenizer is trained)."""
    from attnlab.io import atomic_write_bytes, atomic_write_json

    cfg = cfg or PrepareConfig()
    out = Path(out)
    request = _request(sources, cfg, tokenizers)
    if (out / "manifest.json").is_file():
        manifest = open_manifest(out)
        if manifest.get("request") == request:
            log(f"prepared dataset in {out} is up to date ({manifest['splits']['train']['pairs']} training pairs)")
            return manifest
    work = out / ".work"
    plan_path = work / "plan.json"
    if plan_path.is_file() and _read_json(plan_path).get("request") != request:
        shutil.rmtree(work)  # another request's leftovers
    work.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    plan = _read_json(plan_path) if plan_path.is_file() else None
    if plan is None:  # pass 1: count, sample, train the tokenizer
        sample, n_pairs = reservoir_sample(iter(sources.train), cfg.tokenizer_sample, cfg.seed)
        holdout = 0 if sources.valid is not None else max(1, min(1000, n_pairs // 20))
        if n_pairs - holdout < 1:
            raise ValueError("the training data is empty")
        if tokenizers is None:
            texts = [p for i, p in sample if i < n_pairs - holdout] or [p for _, p in sample]
            tokenizers = TokenizerPair.train(texts, cfg.vocab_size, cfg.joint, cfg.subword_model)
        del sample
        tokenizers.save(work)
        plan = {"request": request, "pairs": n_pairs, "holdout": holdout, "sample_seconds": time.perf_counter() - t0}
        atomic_write_json(plan_path, plan)
        log(f"{n_pairs} training pairs; tokenizer (vocab {tokenizers.src.vocab_size}) trained on a sample of "
            f"{min(cfg.tokenizer_sample, n_pairs)} in {plan['sample_seconds']:.1f}s")
    else:
        tokenizers = TokenizerPair.load(work)
        log(f"resuming the preparation in {work}")
    n_pairs, holdout = plan["pairs"], plan["holdout"]
    dtype = ids_dtype(max(tokenizers.src.vocab_size, tokenizers.tgt.vocab_size)).name
    workers = cfg.workers or os.cpu_count() or 1
    n_chunks = -(-(n_pairs - holdout) // cfg.chunk_pairs)
    encoder = _Encoder(tokenizers, min(workers, n_chunks) if n_chunks > 1 else 1)
    t1 = time.perf_counter()
    totals = {"pairs": 0, "kept": 0, **{r: 0 for r in DROP_REASONS}}
    held: list[Pair] = []
    try:
        pairs = iter(sources.train)
        train_pairs = islice(pairs, n_pairs - holdout)
        for k, (srcs, tgts) in enumerate(_chunks(train_pairs, cfg.chunk_pairs)):
            name = f"chunk-{k:06d}"
            if (work / f"{name}.json").is_file():
                _add(totals, _read_json(work / f"{name}.json"))  # done before a kill
                continue
            for counts in encoder.submit(str(work), name, srcs, tgts, dtype, (cfg.max_len, cfg.max_ratio)):
                _add(totals, counts)
        for counts in encoder.drain():
            _add(totals, counts)
        held = list(pairs)
        if len(held) != holdout:
            raise ValueError("the training data changed while it was being prepared; run prepare again")
        split_pairs: dict[str, list[Pair]] = {"valid": held if holdout else list(sources.valid or []),
                                              "test": list(sources.test or [])}
        for split, pairs_ in split_pairs.items():  # small: encoded whole, in this process, never cleaned
            if pairs_:
                encoder.submit(str(work), split, [s for s, _ in pairs_], [t for _, t in pairs_], dtype, None)
        encoder.drain()
    finally:
        encoder.close()
    encode_seconds = time.perf_counter() - t1
    # concatenate the chunks into the dataset, then the manifest
    files: dict[str, dict[str, Any]] = {}
    splits: dict[str, Any] = {}
    for side in ("src", "tgt"):
        writer = IndexedWriter(out / f"train.{side}", np.dtype(dtype))
        for k in range(n_chunks):
            writer.append_file(work / f"chunk-{k:06d}.{side}")
        splits.setdefault("train", {})[f"{side}_tokens"] = writer.finish()["tokens"]
    splits["train"].update(pairs=totals["kept"], read=totals["pairs"], dropped={r: totals[r] for r in DROP_REASONS})
    for split, pairs_ in split_pairs.items():
        if not pairs_:
            continue
        for side, col in (("src", 0), ("tgt", 1)):
            for ext in ("bin", "idx"):
                os.replace(work / f"{split}.{side}.{ext}", out / f"{split}.{side}.{ext}")
            text = "".join(p[col].replace("\n", " ") + "\n" for p in pairs_)
            atomic_write_bytes(out / f"{split}.{side}.txt", text.encode("utf-8", "surrogateescape"))
        splits[split] = {"pairs": len(pairs_)}
    tokenizers.save(out)
    for path in sorted(out.iterdir()):
        if path.is_file() and path.suffix in (".bin", ".idx", ".txt", ".json") and path.name != "manifest.json":
            files[path.name] = file_entry(path)
    manifest = {"format": FORMAT, "request": request, "tokenizer_sha256": tokenizers.fingerprint(),
                "vocab_size": [tokenizers.src.vocab_size, tokenizers.tgt.vocab_size], "joint": tokenizers.joint,
                "dtype": dtype, "splits": splits, "files": files,
                "seconds": {"sample_and_tokenizer": round(plan["sample_seconds"], 2),
                            "encode": round(encode_seconds, 2), "total": round(time.perf_counter() - t0, 2)}}
    write_manifest(out, manifest)
    shutil.rmtree(work, ignore_errors=True)
    dropped = splits["train"]["dropped"]
    log(f"prepared {out}: {totals['kept']} of {totals['pairs']} training pairs kept (dropped: {dropped['empty']} with an "
        f"empty side, {dropped['ratio']} over the length ratio {cfg.max_ratio}, {dropped['too_long']} over "
        f"{cfg.max_len} tokens); encoding {encode_seconds:.1f}s with {encoder.limit // 2} process(es)")
    return manifest


def _add(totals: dict[str, int], counts: dict[str, Any]) -> None:
    for key in totals:
        totals[key] += int(counts.get(key, 0))


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return {}


def read_texts(directory: str | Path, split: str) -> tuple[list[str], list[str]]:
    """The raw source and target sentences of a prepared validation or test split (for BLEU)."""
    from attnlab.data.streams import stream_lines

    directory = Path(directory)
    if not (directory / f"{split}.src.txt").is_file():
        return [], []
    return list(stream_lines(directory / f"{split}.src.txt")), list(stream_lines(directory / f"{split}.tgt.txt"))
