"""The `attnlab` command line. Each subcommand lives in attnlab/commands/<name>.py and provides
`add_parser(subparsers)` and `run(args)`. Errors users can fix print one line and exit 2; a bug prints
one line and exits 1 (ATTNLAB_DEBUG=1 raises it with its traceback).

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import NoReturn

COMMANDS = ["demo", "prepare", "train", "average", "translate", "evaluate", "attention", "caption", "experiment",
            "export", "serve", "bench", "info"]


def _load_commands() -> dict[str, object]:
    modules = {}
    for name in COMMANDS:
        try:
            modules[name] = importlib.import_module(f"attnlab.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"attnlab.commands.{name}":
                raise
    return modules


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors: `attnlab train: error: ... (see attnlab train --help)`, exit 2
    (argparse's default prints the whole usage first; for `train` that is 15 lines)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see '{self.prog} --help')\n")


def one_line(message: str) -> str:
    return "; ".join(line.strip() for line in str(message).strip().splitlines() if line.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="attnlab",
        description="Attention and the Transformer: train, translate, evaluate, caption, and look at attention.",
    )
    from attnlab import __version__

    parser.add_argument("--version", action="version", version=f"attnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in _load_commands().items():
        module.add_parser(sub)  # type: ignore[attr-defined]
    for command in sub.choices.values():  # the modules' docstrings are the descriptions, less the note for developers
        if command.description and "Place in the layering" in command.description:
            command.description = command.description[:command.description.index("Place in the layering")].rstrip()
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in the run's config.json
    from attnlab.training.checkpoint import CheckpointError
    from attnlab.training.loop import TrainingError

    warnings.simplefilter("default", UserWarning)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"attnlab: warning: {msg}\n"
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        return 0
    except (ValueError, FileNotFoundError, CheckpointError, TrainingError, RuntimeError, OSError) as err:
        if os.environ.get("ATTNLAB_DEBUG"):
            raise
        print(f"attnlab {args.command}: error: {one_line(str(err)) or type(err).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"attnlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a bug: one line for the user, the traceback on request
        if os.environ.get("ATTNLAB_DEBUG"):
            raise
        print(f"attnlab {args.command}: internal error (a bug, please report it): {type(err).__name__}: "
              f"{one_line(str(err))} (ATTNLAB_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
