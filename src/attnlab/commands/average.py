"""attnlab average: the element-wise mean of a finished run's last K checkpoints (the paper, section 6.1: the
base models average the last 5 checkpoints, the big ones the last 20), written as a new model directory that
`attnlab evaluate`, `translate` and `serve` take like any run. (`--set average_last=K` does the same at the end
of training, keeping the average only when it validates better.)

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("average", help="average a run's last checkpoints", description=__doc__)
    p.add_argument("--model", required=True, help="the run directory (attnlab train --out)")
    p.add_argument("--last", type=int, default=5, help="how many of the newest checkpoints (default 5)")
    p.add_argument("--out", required=True, help="the new model directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnlab.run_dir import load_run
    from attnlab.training.checkpoint import average_checkpoints, list_checkpoints, save_weights

    if args.last < 1:
        raise ValueError(f"--last must be >= 1, got {args.last}")
    src, out = Path(args.model), Path(args.out)
    if out.resolve() == src.resolve():
        raise ValueError("--out must be a new directory, not the run itself")
    paths = list_checkpoints(src)[-args.last:]
    if len(paths) < args.last:
        raise ValueError(f"{src} holds {len(paths)} checkpoint(s), fewer than --last {args.last} "
                         "(keep_last limits how many a run keeps)")
    loaded = load_run(src)
    average_checkpoints(paths, loaded.model)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "src_tokenizer.json", "tgt_tokenizer.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    save_weights(loaded.model, out / "model.safetensors", {"averaged": ",".join(p.name for p in paths)})
    print(json.dumps({"out": str(out), "averaged": [p.name for p in paths]}))
    return 0
