"""From a task name and options to encoded training data: corpus -> tokenizer -> token ids.

Tasks: `multi30k` (local copy or download), generated `dates`, `numbers`, `copy`, `reverse` (no
download; the README demo), `files` (your own line-aligned or TSV parallel text), and `wmt14` (the paper's
English-German data, downloaded or found in --data-dir). multi30k, files and wmt14 are prepared into a
binarized dataset (data/prepare.py) and trained from memmaps; the generated tasks stay in memory.

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnlab.data.corpora import ParallelCorpus, read_parallel, read_tsv
from attnlab.data.generated import make_generated_corpus
from attnlab.data.multi30k import load_multi30k, multi30k_paths
from attnlab.data.prepare import CorpusSources
from attnlab.data.streams import PairSource, stream_lines
from attnlab.data.tokenizer import TokenizerPair

GENERATED = ("dates", "numbers", "copy", "reverse")
PREPARED = ("multi30k", "files", "wmt14")  # trained from a binarized dataset
TRANSLATION_TASKS = (*PREPARED, *GENERATED)


@dataclass
class TaskSpec:
    task: str = "dates"
    src_lang: str = "de"
    tgt_lang: str = "en"
    data_dir: str | None = None
    train_src: str | None = None
    train_tgt: str | None = None
    valid_src: str | None = None
    valid_tgt: str | None = None
    test_src: str | None = None
    test_tgt: str | None = None
    train_tsv: str | None = None
    valid_tsv: str | None = None
    n_train: int = 20000
    n_valid: int = 500
    n_test: int = 500
    seed: int = 0
    data_bin: str | None = None  # the prepared (binarized) dataset of a PREPARED task
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TaskSpec":
        names = cls.__dataclass_fields__
        return cls(**{k: getattr(args, k) for k in names if hasattr(args, k) and getattr(args, k) is not None})

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def load_corpus(spec: TaskSpec) -> ParallelCorpus:
    if spec.task == "multi30k":
        return load_multi30k(spec.src_lang, spec.tgt_lang, data_dir=spec.data_dir)
    if spec.task in GENERATED:
        kw: dict[str, Any] = {}
        if spec.task in ("dates", "numbers"):
            kw = {"src_lang": spec.src_lang, "tgt_lang": spec.tgt_lang}
        return make_generated_corpus(spec.task, spec.n_train, spec.n_valid, spec.n_test, spec.seed, **kw, **spec.extra)
    if spec.task == "files":
        if spec.train_tsv:
            train = read_tsv(spec.train_tsv)
            valid = read_tsv(spec.valid_tsv) if spec.valid_tsv else []
        elif spec.train_src and spec.train_tgt:
            train = read_parallel(spec.train_src, spec.train_tgt)
            valid = read_parallel(spec.valid_src, spec.valid_tgt) if spec.valid_src and spec.valid_tgt else []
        else:
            raise ValueError("--task files needs --train-src and --train-tgt (or --train-tsv)")
        test = read_parallel(spec.test_src, spec.test_tgt) if spec.test_src and spec.test_tgt else []
        if not valid:  # hold out a little of the training data
            n = max(1, min(1000, len(train) // 20))
            train, valid = train[:-n], train[-n:]
        return ParallelCorpus(name="files", src_lang=spec.src_lang, tgt_lang=spec.tgt_lang,
                              train=train, valid=valid, test=test)
    if spec.task == "wmt14":  # whole, in memory: for small uses only; training reads the prepared dataset
        sources = corpus_sources(spec)
        return ParallelCorpus(name="wmt14", src_lang=spec.src_lang, tgt_lang=spec.tgt_lang, train=list(sources.train),
                              valid=list(sources.valid or []), test=list(sources.test or []))
    raise ValueError(f"unknown task {spec.task!r}; choose from {', '.join(TRANSLATION_TASKS)}")


def corpus_sources(spec: TaskSpec) -> CorpusSources:
    """Where a PREPARED task's splits are read from, as streams (nothing is read yet)."""
    if spec.task == "multi30k":
        paths = multi30k_paths(spec.src_lang, spec.tgt_lang, data_dir=spec.data_dir)
        return CorpusSources(*(PairSource(str(s), str(t)) for s, t in (paths["train"], paths["valid"], paths["test"])))
    if spec.task == "wmt14":
        from attnlab.data.wmt14 import wmt14_sources

        found = wmt14_sources(spec.src_lang, spec.tgt_lang, cache=spec.data_dir)
        return CorpusSources(found["train"], found["valid"], found["test"])
    if spec.task == "files":
        if spec.train_tsv:
            train = PairSource(tsv=spec.train_tsv)
            valid = PairSource(tsv=spec.valid_tsv) if spec.valid_tsv else None
        elif spec.train_src and spec.train_tgt:
            train = PairSource(spec.train_src, spec.train_tgt)
            valid = PairSource(spec.valid_src, spec.valid_tgt) if spec.valid_src and spec.valid_tgt else None
        else:
            raise ValueError("--task files needs --train-src and --train-tgt (or --train-tsv)")
        test = PairSource(spec.test_src, spec.test_tgt) if spec.test_src and spec.test_tgt else None
        return CorpusSources(train, valid, test)
    raise ValueError(f"task {spec.task!r} is not read from files; choose from {', '.join(PREPARED)}")


def eval_pairs(spec: TaskSpec, split: str) -> list[tuple[str, str]]:
    """The validation or test pairs of a task, without reading its training data when it can be avoided."""
    if spec.data_bin and (Path(spec.data_bin) / f"{split}.src.txt").is_file():
        d = Path(spec.data_bin)
        return list(zip(stream_lines(d / f"{split}.src.txt"), stream_lines(d / f"{split}.tgt.txt")))
    if spec.task in PREPARED and not (spec.task == "files" and split == "valid"):
        source = getattr(corpus_sources(spec), split)
        return list(source) if source is not None else []
    corpus = load_corpus(spec)
    return corpus.test if split == "test" else corpus.valid


def build_tokenizers(corpus: ParallelCorpus, vocab_size: int, joint: bool = True, model: str = "bpe") -> TokenizerPair:
    return TokenizerPair.train(corpus.train, vocab_size=vocab_size, joint=joint, model=model)
