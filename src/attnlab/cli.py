"""The `attnlab` command line. Each subcommand lives in attnlab/commands/<name>.py and provides
`add_parser(subparsers)` and `run(args)`. Errors users can fix print one line and exit 2."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

COMMANDS = ["demo", "train", "translate", "evaluate", "attention", "caption", "experiment", "export", "serve", "bench"]


def _load_commands() -> dict[str, object]:
    modules = {}
    for name in COMMANDS:
        try:
            modules[name] = importlib.import_module(f"attnlab.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"attnlab.commands.{name}":
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnlab",
        description="Attention and the Transformer: train, translate, evaluate, caption, and look at attention.",
    )
    from attnlab import __version__

    parser.add_argument("--version", action="version", version=f"attnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in _load_commands().items():
        module.add_parser(sub)  # type: ignore[attr-defined]
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
    except (ValueError, FileNotFoundError, CheckpointError, TrainingError, RuntimeError, OSError) as err:
        if os.environ.get("ATTNLAB_DEBUG"):
            raise
        print(f"attnlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"attnlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
