"""attnlab bench: side-by-side speed benchmarks against the references (JSON out); see benchmarks/README.md.

    attnlab bench train      training throughput vs a plain torch.nn.Transformer loop (MFU, peak RSS)
    attnlab bench epoch      a Multi30k epoch end to end vs a DataLoader loop (padding waste included)
    attnlab bench decode     greedy / beam sentences/s vs Hugging Face Marian and nn.Transformer; memory
    attnlab bench attention  fused vs naive attention as the sequence length doubles

Each takes its own options: `attnlab bench train --help`.

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import importlib

KINDS = ("train", "epoch", "decode", "attention")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed benchmarks against the references (JSON out)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=KINDS)
    p.add_argument("options", nargs=argparse.REMAINDER, help="options of the benchmark (see its --help)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    importlib.import_module(f"attnlab.bench.{args.kind}").main(args.options)
    return 0
