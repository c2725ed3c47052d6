"""attnlab demo: the README's first command. Trains a small Transformer on a generated task (dates
written in English -> German, no download) for a couple of minutes, translates a few examples,
scores the test split, and writes a cross-attention heatmap.

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train, translate and draw attention on a generated task (~2 min)",
                       description=__doc__)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--task", default="dates", choices=["dates", "numbers"])
    p.add_argument("--minutes", type=float, default=2.0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnlab.cli import main as cli

    if not args.out.strip():
        raise ValueError("--out is empty; name the run directory")
    out = Path(args.out)
    if (out / "checkpoints").exists():
        raise ValueError(f"{out} already holds a run; remove it or pass --out elsewhere")
    steps = [
        ["train", "--task", args.task, "--out", str(out), "--max-minutes", str(args.minutes)],
        ["evaluate", "--model", str(out), "--split", "test", "--limit", "300"],
        ["translate", "--model", str(out), "--text", _example(args.task, 0), "--text", _example(args.task, 1)],
        ["attention", "--model", str(out), "--text", _example(args.task, 0), "--out", str(out / "attention.png")],
    ]
    for step in steps:
        print(f"\n$ attnlab {' '.join(repr(s) if ' ' in s else s for s in step)}", flush=True)
        code = cli(step)
        if code:
            return code
    return 0


def _example(task: str, i: int) -> str:
    if task == "numbers":
        return ["four thousand three hundred and twenty-one", "seventy-seven"][i]
    return ["Saturday, March 14, 2026", "December 1, 1999"][i]
