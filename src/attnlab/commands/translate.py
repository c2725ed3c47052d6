"""attnlab translate: one sentence per line from stdin (or --text / --input) to stdout.

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import sys

from attnlab.commands.common import add_decode_args, decode_config, load_translator


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
    return read_stdin()


def read_stdin() -> list[str]:
    """stdin as UTF-8 lines, split as files are (attnlab.data.corpora.split_lines); bytes that are not
    UTF-8 are a one-line error naming the byte, never a crash in the tokenizer."""
    from attnlab.data.corpora import split_lines

    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stream (tests, embedding)
        return split_lines(sys.stdin.read())
    data = buffer.read()
    try:
        return split_lines(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"stdin is not UTF-8 text: {err.reason} at byte {err.start} (line {line})") from None


def run(args: argparse.Namespace) -> int:

    cfg = decode_config(args)
    translator = load_translator(args)
    lines = read_input(args)
    results = translator.translate_n_best(lines, cfg)
    for hyps in results:
        print("\t".join(hyps[: cfg.n_best]) if cfg.n_best > 1 else hyps[0], flush=False)
    sys.stdout.flush()
    return 0
