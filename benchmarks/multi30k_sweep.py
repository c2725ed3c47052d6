"""Collect Multi30k runs into one sweep record, scored on the VALIDATION set only (issue: never choose with test2016).

Each run directory gives its command, its settings (model and training, as saved in config.json), the steps and
minutes it trained, its validation curve (loss, BLEU on the validation sentences), and the decoding settings
it chose on validation (beam, length penalty, with the grid it tried). No test-set score is read here.

    python benchmarks/multi30k_sweep.py RUN_DIR [RUN_DIR ...] --out benchmarks/results/multi30k_sweep.json \
        [--note "what was compared, on which machine, under which load"]

Runs already in --out are kept (a run is keyed by its directory name), so a sweep can grow over sessions.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def summarise(run: Path) -> dict[str, Any]:
    config = json.loads((run / "config.json").read_text())
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    valid = [e for e in events if e.get("event") == "valid"]
    end = [e for e in events if e.get("event") == "end"]
    decode = config.get("decode") or {}
    return {
        "command": config.get("command"),
        "task": config.get("task", {}).get("name") if isinstance(config.get("task"), dict) else config.get("task"),
        "model": config.get("model"),
        "train": config.get("train"),
        "steps": end[-1].get("steps") if end else None,
        "minutes": end[-1].get("minutes") if end else None,
        "valid_curve": [{k: e.get(k) for k in ("step", "minutes", "valid_loss", "bleu")} for e in valid],
        "valid_bleu_last": valid[-1].get("bleu") if valid else None,
        "valid_bleu_best": max((e.get("bleu") or 0.0 for e in valid), default=None),
        "decoding_chosen_on_validation": decode,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default="benchmarks/results/multi30k_sweep.json")
    p.add_argument("--note", default=None)
    args = p.parse_args()
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.is_file() else {
        "what": "Multi30k recipe sweeps, scored on the validation set (val, 1,014 sentences) only", "runs": {}}
    for run in args.runs:
        record["runs"][Path(run).name] = summarise(Path(run))
    if args.note:
        record.setdefault("notes", []).append(args.note)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    for name, r in record["runs"].items():
        print(f"{name}: {r['steps']} steps, {r['minutes']} min, valid BLEU last {r['valid_bleu_last']} "
              f"(decoding chosen: {r['decoding_chosen_on_validation'].get('beam')}, "
              f"lp {r['decoding_chosen_on_validation'].get('length_penalty')})")


if __name__ == "__main__":
    main()
