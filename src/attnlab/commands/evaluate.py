"""attnlab evaluate: sacreBLEU and chrF of a model on a source/reference file pair (or a split of its task).
For an image captioner: BLEU-1..4 against all the reference captions of each image (a split of its task,
or --captions FILE).

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import json
import time

from attnlab.commands.common import add_decode_args, decode_config, load_translator


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a model with sacreBLEU and chrF", description=__doc__)
    p.add_argument("--model", required=True, help="run directory written by 'attnlab train'")
    p.add_argument("--src", default=None, help="source file, one sentence per line (.gz ok)")
    p.add_argument("--ref", default=None, help="reference file, line-aligned with --src")
    p.add_argument("--split", default=None, choices=["valid", "test"],
                   help="instead of --src/--ref, use this split of the task the model was trained on")
    p.add_argument("--data-dir", default=None, help="with --split: where the task's data lies now")
    p.add_argument("--captions", default=None, help="captioner: a captions TSV or COCO-format JSON to score on")
    p.add_argument("--image-dir", default=None, help="with --captions FILE.json: the folder of its images")
    p.add_argument("--limit", type=int, default=0, help="score only the first N sentences")
    p.add_argument("--hyp-out", default=None, help="write the translations to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object: bleu, chrf, sentences, seconds")
    add_decode_args(p)
    p.set_defaults(func=run)


def load_pairs(args: argparse.Namespace, meta: dict) -> tuple[list[str], list[str]]:
    if args.src and args.ref:
        from attnlab.data.corpora import read_parallel

        pairs = read_parallel(args.src, args.ref)
    elif args.split:
        from attnlab.tasks import TaskSpec, eval_pairs

        spec = TaskSpec(**{k: v for k, v in meta["task"].items() if k in TaskSpec.__dataclass_fields__})
        if args.data_dir:
            spec.data_dir = args.data_dir
        pairs = eval_pairs(spec, args.split)
        if not pairs:
            raise ValueError(f"the task {spec.task!r} has no {args.split} split; pass --src and --ref")
    else:
        raise ValueError("pass --src FILE --ref FILE, or --split test")
    if args.limit:
        pairs = pairs[: args.limit]
    if not pairs:
        raise ValueError("nothing to evaluate: the source file is empty")
    return [s for s, _ in pairs], [t for _, t in pairs]


def run(args: argparse.Namespace) -> int:
    from attnlab.commands.evaluate_captions import is_captioner_run, run_captions
    from attnlab.metrics.bleu import corpus_scores

    if is_captioner_run(args.model):
        return run_captions(args)
    if args.captions:
        raise ValueError("--captions is for image captioners; a translator takes --src FILE --ref FILE or --split")

    cfg = decode_config(args)
    translator = load_translator(args)
    cfg = translator.resolve(cfg)
    sources, refs = load_pairs(args, translator.meta)
    t0 = time.perf_counter()
    hyps = translator.translate(sources, cfg)
    seconds = time.perf_counter() - t0
    scores = corpus_scores(hyps, refs)
    if args.hyp_out:
        with open(args.hyp_out, "w", encoding="utf-8") as f:
            f.write("\n".join(hyps) + "\n")
    result = {"bleu": scores["bleu"], "chrf": scores["chrf"], "sentences": len(hyps), "seconds": round(seconds, 3),
              "beam": cfg.beam, "signature": scores["bleu_signature"]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  ({len(hyps)} sentences, beam {cfg.beam}, "
              f"{seconds:.1f} s)\n{scores['bleu_signature']}")
    return 0
