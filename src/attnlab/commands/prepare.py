"""attnlab prepare: raw parallel text -> a binarized dataset (token ids in memory-mapped .bin/.idx files, a
manifest), streamed, encoded by worker processes, resumable when killed. `attnlab train --data-bin OUT` trains
from it; `attnlab train --task multi30k|files|wmt14` does the same into RUN/data by itself.

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import json
import sys

from attnlab.commands.train import add_corpus_args, add_prepare_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="binarize a parallel corpus for training", description=__doc__)
    p.add_argument("--task", default="files", help="files | multi30k | wmt14 (default: files)")
    add_corpus_args(p)
    p.add_argument("--out", required=True, help="the dataset's folder")
    p.add_argument("--vocab-size", type=int, default=None, help="subword vocabulary (default: the task's, e.g. 8000)")
    p.add_argument("--separate-vocab", action="store_true", help="separate source/target vocabularies")
    p.add_argument("--max-len", type=int, default=256,
                   help="drop (never truncate) pairs with a side longer than this many tokens with BOS/EOS")
    p.add_argument("--seed", type=int, default=0, help="the tokenizer sample's seed")
    add_prepare_args(p)
    p.add_argument("--verify", action="store_true", help="check an existing dataset in --out against its manifest "
                                                         "(sizes and sha256) and exit")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnlab.data.binarized import open_manifest
    from attnlab.data.prepare import prepare_dataset
    from attnlab.tasks import PREPARED, TaskSpec, corpus_sources
    from attnlab.pipelines.translation import _defaults, prepare_config

    if args.verify:
        manifest = open_manifest(args.out, verify=True)
        print(f"{args.out}: {len(manifest['files'])} files match the manifest")
        return 0
    if args.task not in PREPARED:
        raise ValueError(f"attnlab prepare reads files: --task {args.task!r} is not one of {', '.join(PREPARED)}")
    for flag in ("vocab_size", "tokenizer_sample", "workers"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.max_len < 3:
        raise ValueError(f"--max-len must be >= 3, got {args.max_len}")
    if args.max_ratio is not None and not args.max_ratio >= 1:
        raise ValueError(f"--max-ratio must be >= 1, got {args.max_ratio}")
    d = _defaults(args.task)
    spec = TaskSpec.from_args(args)
    spec.src_lang = args.src_lang or d.get("src_lang", "de")
    spec.tgt_lang = args.tgt_lang or d.get("tgt_lang", "en")
    log = (lambda msg: print(f"attnlab prepare: {msg}", file=sys.stderr, flush=True)) if not args.no_progress \
        else (lambda msg: None)
    manifest = prepare_dataset(corpus_sources(spec), args.out, prepare_config(args, spec, args.max_len), log=log)
    print(json.dumps({"out": args.out, "splits": manifest["splits"], "dtype": manifest["dtype"],
                      "vocab_size": manifest["vocab_size"], "seconds": manifest["seconds"]}, indent=2))
    return 0
