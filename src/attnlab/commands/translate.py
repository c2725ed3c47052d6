"""attnlab translate: one sentence per line from stdin (or --text / --input) to stdout."""
from __future__ import annotations

import argparse
import sys

from attnlab.commands.common import add_decode_args, decode_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("translate", help="translate text with a trained model", description=__doc__)
    p.add_argument("--model", required=True, help="run directory written by 'attnlab train'")
    p.add_argument("--text", action="append", default=None, help="a sentence to translate (repeatable)")
    p.add_argument("--input", default=None, help="file with one sentence per line (default: stdin)")
    add_decode_args(p)
    p.set_defaults(func=run)


def read_input(args: argparse.Namespace) -> list[str]:
    if args.text:
        return list(args.text)
    if args.input:
        from attnlab.data.corpora import read_lines

        return read_lines(args.input)
    return [line.rstrip("\n") for line in sys.stdin]


def run(args: argparse.Namespace) -> int:
    from attnlab.translate import Translator

    cfg = decode_config(args)
    translator = Translator.load(args.model, args.device)
    lines = read_input(args)
    results = translator.translate_n_best(lines, cfg)
    for hyps in results:
        print("\t".join(hyps[: cfg.n_best]) if cfg.n_best > 1 else hyps[0], flush=False)
    sys.stdout.flush()
    return 0
