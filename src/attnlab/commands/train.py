"""attnlab train: build the task's data and tokenizer, then train (or resume) a model into RUN.

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from attnlab.config import TRANSFORMER_PRESETS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model", description=__doc__)
    p.add_argument("--task", default=None,
                   help="multi30k | wmt14 | files | dates | numbers | copy | reverse | captions | scenes "
                        "(default: dates; files with --data-bin)")
    add_corpus_args(p)
    p.add_argument("--data-bin", default=None,
                   help="a dataset made by `attnlab prepare` (multi30k, files, wmt14); default: prepared into RUN/data")
    add_prepare_args(p)
    p.add_argument("--captions-tsv", default=None, help="--task captions: TSV of captions (coco_mini format)")
    p.add_argument("--coco-json", default=None, help="--task captions: COCO-format captions JSON")
    p.add_argument("--image-dir", default=None, help="--task captions: folder of the images of --coco-json")
    p.add_argument("--n-train", type=int, default=None, help="generated tasks: training examples")
    p.add_argument("--max-value", type=int, default=None, help="numbers task: largest number (longer sentences)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, tokenizer, logs)")
    p.add_argument("--arch", default=None, help="transformer | rnn | rnn-attn (translation; default transformer) | "
                                              "sat | caption-transformer (captioning; default sat)")
    p.add_argument("--attention", default=None, help="rnn-attn: bahdanau | luong-dot | luong-general")
    p.add_argument("--preset", default=None, help=f"model size ({', '.join(TRANSFORMER_PRESETS)})")
    p.add_argument("--vocab-size", type=int, default=None, help="subword vocabulary size")
    p.add_argument("--separate-vocab", action="store_true", help="separate source/target vocabularies")
    p.add_argument("--max-minutes", type=float, default=None, help="time budget for the run")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training or model setting, e.g. --set warmup_steps=2000 --set d_model=256")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--device", default=None,
                   help="cpu | cuda | cuda:N (default: cuda if available; under torchrun, cuda = GPU LOCAL_RANK)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def add_corpus_args(p: argparse.ArgumentParser) -> None:
    """Where a translation task's text is (attnlab train and attnlab prepare)."""
    p.add_argument("--src-lang", default=None)
    p.add_argument("--tgt-lang", default=None)
    p.add_argument("--data-dir", default=None, help="local copy of the data (e.g. ../shared/data/multi30k; "
                                                   "wmt14: the folder of its .tgz files, default ~/.cache/attnlab/wmt14)")
    for split in ("train", "valid", "test"):
        p.add_argument(f"--{split}-src", default=None, help=f"{split} source file (--task files)")
        p.add_argument(f"--{split}-tgt", default=None, help=f"{split} target file (--task files)")
    p.add_argument("--train-tsv", default=None, help="tab-separated source<TAB>target (--task files)")
    p.add_argument("--valid-tsv", default=None)


def add_prepare_args(p: argparse.ArgumentParser) -> None:
    """Options of the binarized-dataset preparation (attnlab prepare; attnlab train prepares implicitly)."""
    p.add_argument("--tokenizer-sample", type=int, default=None,
                   help="training pairs (a seeded uniform sample) the tokenizer learns from (default 200,000)")
    p.add_argument("--max-ratio", type=float, default=None,
                   help="drop pairs whose token counts differ by more than this factor (default 9; wmt14 1.5)")
    p.add_argument("--workers", type=int, default=None, help="encoding processes (default: one per CPU core)")


def run(args: argparse.Namespace) -> int:
    from attnlab.pipelines import translation as pipeline

    summary = pipeline.train_from_args(args)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    print(json.dumps(summary, indent=2), file=sys.stderr if args.no_progress else sys.stdout)
    return 0


__all__ = ["add_parser", "run"]
