"""attnlab experiment length: fixed context vs attention vs Transformer, BLEU by source length.

Trains each architecture on the same task and data for the same time budget, translates the test
split, and writes BLEU per source-length bucket (the shape of Bahdanau et al. 2014, Figure 2) as a
table (results.md), JSON (results.json) and a plot (bleu_by_length.png), with training time per
architecture. Runs that already exist in OUT/<arch> are resumed (or reused when finished).

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ARCHS = ("rnn", "rnn-attn", "transformer")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="compare architectures (BLEU by source length)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=["length"], help="the experiment to run")
    p.add_argument("--task", default="numbers", help="numbers (default: long inputs exist) | dates | multi30k | files")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--src-lang", default=None)
    p.add_argument("--tgt-lang", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--archs", default=",".join(ARCHS), help="comma-separated, default: rnn,rnn-attn,transformer")
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per architecture")
    p.add_argument("--max-value", type=int, default=None, help="numbers task: largest number (longer inputs)")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--buckets", type=int, default=6, help="number of source-length buckets")
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every 'train'")
    p.set_defaults(func=run)


def length_buckets(lengths: list[int], n: int) -> list[tuple[int, int]]:
    """Equal-width buckets [lo, hi] over the observed source lengths (in words)."""
    lo, hi = min(lengths), max(lengths)
    width = max(1, -(-(hi - lo + 1) // n))
    return [(a, min(a + width - 1, hi)) for a in range(lo, hi + 1, width)]


def bleu_by_length(sources: list[str], hyps: list[str], refs: list[str], buckets: list[tuple[int, int]]) -> list[dict]:
    from attnlab.metrics.bleu import corpus_scores

    rows = []
    for lo, hi in buckets:
        idx = [i for i, s in enumerate(sources) if lo <= len(s.split()) <= hi]
        if not idx:
            continue
        scores = corpus_scores([hyps[i] for i in idx], [refs[i] for i in idx])
        rows.append({"lengths": f"{lo}-{hi}", "lo": lo, "hi": hi, "sentences": len(idx), "bleu": scores["bleu"]})
    return rows


def run(args: argparse.Namespace) -> int:
    from attnlab.cli import main as cli
    from attnlab.metrics.bleu import corpus_scores
    from attnlab.tasks import TaskSpec, load_corpus
    from attnlab.translate import DecodeConfig, Translator

    if not args.out.strip():
        raise ValueError("--out is empty; name the directory for the runs and results")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    for arch in archs:
        if arch not in ARCHS:
            raise ValueError(f"--archs: unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    results: dict = {"task": args.task, "minutes_per_arch": args.minutes, "beam": args.beam, "archs": {}}
    corpus = None
    for arch in archs:
        run_dir = out / arch
        argv = ["train", "--task", args.task, "--arch", arch, "--out", str(run_dir), "--max-minutes", str(args.minutes),
                "--no-progress"]
        if args.task == "numbers" and args.tgt_lang is None:
            args.tgt_lang = "fr"  # German writes numbers as one word; French spaces them, so BLEU sees words
        for flag in ("data_dir", "src_lang", "tgt_lang", "n_train"):
            if getattr(args, flag) is not None:
                argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        if args.max_value is not None:
            argv += ["--max-value", str(args.max_value)]
        for item in args.set:
            argv += ["--set", item]
        if (run_dir / "checkpoints").exists():
            argv.append("--resume")
        print(f"\n== {arch}: attnlab {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        code = cli(argv)
        if code:
            return code
        wall = time.perf_counter() - t0
        translator = Translator.load(run_dir)
        if corpus is None:
            spec = TaskSpec(**{k: v for k, v in translator.meta["task"].items() if k in TaskSpec.__dataclass_fields__})
            corpus = load_corpus(spec)
        sources = [s for s, _ in corpus.test]
        refs = [t for _, t in corpus.test]
        t1 = time.perf_counter()
        hyps = translator.translate(sources, DecodeConfig(beam=args.beam))
        decode_s = time.perf_counter() - t1
        buckets = length_buckets([len(s.split()) for s in sources], args.buckets)
        log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        end = [e for e in log if e["event"] == "end"][-1]
        results["archs"][arch] = {
            "bleu": corpus_scores(hyps, refs)["bleu"],
            "by_length": bleu_by_length(sources, hyps, refs, buckets),
            "training_minutes": end["minutes"], "steps": end["steps"], "wall_minutes_this_call": round(wall / 60, 2),
            "decode_seconds": round(decode_s, 2), "parameters": sum(p.numel() for p in translator.model.parameters()),
        }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = render_table(results)
    (out / "results.md").write_text(table)
    plot(results, out / "bleu_by_length.png")
    print("\n" + table + f"\nwrote {out / 'results.json'}, {out / 'results.md'}, {out / 'bleu_by_length.png'}")
    return 0


def render_table(results: dict) -> str:
    archs = list(results["archs"])
    first = results["archs"][archs[0]]["by_length"]
    lines = [f"BLEU by source length ({results['task']}, test split, {results['minutes_per_arch']} min per architecture)",
             "", "| source words | sentences | " + " | ".join(archs) + " |",
             "|---|---|" + "---|" * len(archs)]
    for i, row in enumerate(first):
        cells = []
        for a in archs:
            rows = results["archs"][a]["by_length"]
            cells.append(f"{rows[i]['bleu']:.1f}" if i < len(rows) else "-")
        lines.append(f"| {row['lengths']} | {row['sentences']} | " + " | ".join(cells) + " |")
    lines.append("| **all** | | " + " | ".join(f"**{results['archs'][a]['bleu']:.1f}**" for a in archs) + " |")
    lines.append("| training minutes | | " + " | ".join(f"{results['archs'][a]['training_minutes']}" for a in archs) + " |")
    lines.append("| parameters | | " + " | ".join(f"{results['archs'][a]['parameters'] / 1e6:.2f}M" for a in archs) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"rnn": "RNN, fixed context (Cho/Sutskever)", "rnn-attn": "RNN + attention (Bahdanau)",
              "transformer": "Transformer"}
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arch, res in results["archs"].items():
        rows = res["by_length"]
        ax.plot([(r["lo"] + r["hi"]) / 2 for r in rows], [r["bleu"] for r in rows], marker="o",
                label=f"{labels.get(arch, arch)} ({res['bleu']:.1f})")
    ax.set_xlabel("source sentence length (words)")
    ax.set_ylabel("BLEU")
    ax.set_title(f"BLEU by source length: {results['task']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
