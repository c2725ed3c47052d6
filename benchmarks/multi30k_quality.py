"""Quality benchmark: train attnlab on Multi30k (de->en by default) within a time budget on this machine, then
score test_2016_flickr with sacreBLEU (detokenised, default settings): greedy, beam search, and the decoding
settings the run chose on the validation set and stored with the model ("stored"). Writes JSON.

    python benchmarks/multi30k_quality.py --data-dir ../shared/data/multi30k --minutes 60 \
        --run-dir runs/m30k --out benchmarks/results/multi30k_de_en.json [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from attnlab.bench.common import cpu_model  # noqa: E402


def sh(cmd: list[str]) -> str:
    print("$", shlex.join(cmd), flush=True)
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("ATTNLAB_DATA_DIR", "../shared/data") + "/multi30k")
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--src-lang", default="de")
    ap.add_argument("--tgt-lang", default="en")
    ap.add_argument("--run-dir", default="runs/m30k")
    ap.add_argument("--out", default="benchmarks/results/multi30k_de_en.json")
    ap.add_argument("--arch", default="transformer")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--skip-train", action="store_true", help="only evaluate an existing --run-dir")
    ap.add_argument("--int8", action="store_true", help="also score the dynamically int8-quantised model")
    args = ap.parse_args()

    exe = [sys.executable, "-m", "attnlab"]
    train_cmd = exe + ["train", "--task", "multi30k", "--src-lang", args.src_lang, "--tgt-lang", args.tgt_lang,
                       "--data-dir", args.data_dir,
                       "--out", args.run_dir, "--arch", args.arch, "--max-minutes", str(args.minutes), "--no-progress"]
    if args.preset:
        train_cmd += ["--preset", args.preset]
    for item in args.set:
        train_cmd += ["--set", item]
    t0 = time.time()
    if not args.skip_train:
        resume = ["--resume"] if (Path(args.run_dir) / "checkpoints").exists() else []
        sh(train_cmd + resume)
    train_wall = time.time() - t0

    log = [json.loads(line) for line in open(Path(args.run_dir) / "log.jsonl")]
    train_events = [r for r in log if r.get("event") == "train"]
    valid_events = [r for r in log if r.get("event") == "valid"]
    end = [r for r in log if r.get("event") == "end"][-1]
    tok_s = [r["tokens_per_s"] for r in train_events[1:]]
    results = {}
    for int8 in ([False, True] if args.int8 else [False]):
        for beam in (1, args.beam):
            out = sh(exe + ["evaluate", "--model", args.run_dir, "--split", "test", "--data-dir", args.data_dir,
                            "--beam", str(beam), "--json"] + (["--int8"] if int8 else []))
            results[f"beam{beam}" + ("_int8" if int8 else "")] = json.loads(out.strip().splitlines()[-1])
    out = sh(exe + ["evaluate", "--model", args.run_dir, "--split", "test", "--data-dir", args.data_dir, "--json"])
    results["stored"] = json.loads(out.strip().splitlines()[-1])
    stored_decode = json.loads((Path(args.run_dir) / "config.json").read_text()).get("decode")
    import torch

    from attnlab.training.amp import cpu_has_bf16

    int8_report = {}
    if args.int8:
        for beam in (1, args.beam):
            r = results[f"beam{beam}_int8"]
            int8_report[f"beam{beam}"] = {"bleu": r["bleu"], "chrf": r["chrf"], "decode_seconds": r["seconds"],
                                          "bleu_change": round(r["bleu"] - results[f"beam{beam}"]["bleu"], 2),
                                          "speedup": round(results[f"beam{beam}"]["seconds"] / r["seconds"], 3)}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None

    report = {
        "benchmark": f"multi30k {args.src_lang}->{args.tgt_lang} test_2016_flickr, sacreBLEU (detokenised, default settings)",
        "command": shlex.join([sys.executable, *sys.argv]),
        "train_command": shlex.join(train_cmd),
        "arch": args.arch,
        "bleu_greedy": results["beam1"]["bleu"],
        f"bleu_beam{args.beam}": results[f"beam{args.beam}"]["bleu"],
        "chrf_greedy": results["beam1"]["chrf"],
        f"chrf_beam{args.beam}": results[f"beam{args.beam}"]["chrf"],
        "decode_seconds_greedy": results["beam1"]["seconds"],
        f"decode_seconds_beam{args.beam}": results[f"beam{args.beam}"]["seconds"],
        "bleu_stored_decoding": results["stored"]["bleu"],
        "stored_decoding_chosen_on_validation": stored_decode,
        "sacrebleu_signature": results["beam1"]["signature"],
        "sacrebleu_signature_stored": results["stored"]["signature"],
        "training_minutes": end.get("minutes"),
        "training_wall_minutes_this_invocation": round(train_wall / 60, 2),
        "steps": end.get("steps"), "epochs": end.get("epochs"), "amp": end.get("amp"),
        "train_tokens_per_s_median": sorted(tok_s)[len(tok_s) // 2] if tok_s else None,
        "best_valid_bleu": max((r.get("bleu", 0) for r in valid_events), default=None),
        "valid_curve": [{k: r.get(k) for k in ("step", "minutes", "bleu", "valid_loss")} for r in valid_events],
        "int8": int8_report or None,
        "commit": commit,
        "machine": {"cpu": cpu_model(), "threads": torch.get_num_threads(), "bf16_matmul": cpu_has_bf16(),
                    "torch": torch.__version__, "python": platform.python_version()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "valid_curve"}, indent=2))


if __name__ == "__main__":
    main()
