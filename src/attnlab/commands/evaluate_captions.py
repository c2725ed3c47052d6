"""`attnlab evaluate` for an image captioner: BLEU-1..4 of its captions against all the reference
captions of each image (Xu et al. 2015, Table 1), on a split of the task it was trained on or on a
captions file (the TSV of coco_mini, or COCO-format JSON with --image-dir).

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from attnlab.models.registry import supports
from attnlab.run_dir import read_run_config
from attnlab.training.checkpoint import CheckpointError


def is_captioner_run(path: str) -> bool:
    try:
        return supports(read_run_config(Path(path)).get("arch"), "captioning")
    except (CheckpointError, ValueError):  # not a run directory of ours, or an unknown arch: the translator's path reports it
        return False


def load_references(args: argparse.Namespace, task: dict, image_size: int) -> tuple[torch.Tensor, list[list[str]]]:
    """-> images (N, 3, H, W) and each image's reference captions."""
    from attnlab.data.images import load_image, read_captions_tsv, read_coco_json
    from attnlab.pipelines.captioning import load_caption_data

    if args.src or args.ref:
        raise ValueError("this model is an image captioner: pass --split test, or --captions FILE (TSV or COCO JSON)")
    if args.captions:
        path = Path(args.captions)
        if path.suffix.lower() == ".json":
            items = read_coco_json(path, args.image_dir or path.parent)
        else:
            items = read_captions_tsv(path, args.image_dir)
        if args.limit:
            items = items[: args.limit]
        data = [(load_image(item.image_path, image_size), item.captions) for item in items]
    elif args.split:
        task = dict(task)
        if args.data_dir:
            task["data_dir"] = args.data_dir
        _, valid, test = load_caption_data(task, image_size)
        data = (test if args.split == "test" else valid)[: args.limit or None]
    else:
        raise ValueError("pass --split test (the task the captioner was trained on), or --captions FILE")
    if not data:
        raise ValueError("nothing to evaluate: no captioned images")
    return torch.stack([image for image, _ in data]), [refs for _, refs in data]


def scene_attention(args: argparse.Namespace, captioner) -> dict[str, float]:
    """For a scenes captioner on a split of its task: attention mass on each object it names, vs chance."""
    from attnlab.caption import attention_on_objects
    from attnlab.pipelines.captioning import scene_splits

    _, valid, test = scene_splits(captioner.meta["task"], captioner.image_size)
    scores = attention_on_objects(captioner, (test if args.split == "test" else valid)[: args.limit or None], args.beam)
    if not scores["words"]:  # no caption named an object: nothing to measure (null in JSON, not NaN)
        return {"attention_mass": None, "attention_chance": None, "attention_words": 0}
    return {"attention_mass": round(scores["mass"], 4), "attention_chance": round(scores["chance"], 4),
            "attention_words": scores["words"]}


def run_captions(args: argparse.Namespace) -> int:
    from attnlab.caption import Captioner
    from attnlab.device import parse_device
    from attnlab.metrics.caption_bleu import corpus_bleu_multi

    if args.beam is None:  # a captioner stores no decoding settings: greedy unless asked
        args.beam = 1
    if args.beam < 1:
        raise ValueError(f"--beam must be >= 1, got {args.beam}")
    captioner = Captioner.load(args.model, parse_device(args.device))
    images, references = load_references(args, captioner.meta.get("task", {}), captioner.image_size)
    t0 = time.perf_counter()
    hyps = captioner.captions(images, args.beam)
    seconds = time.perf_counter() - t0
    scores = {k: round(v, 2) for k, v in corpus_bleu_multi(hyps, references).items()}
    if args.hyp_out:
        Path(args.hyp_out).write_text("\n".join(hyps) + "\n", encoding="utf-8")
    result = {**scores, "images": len(hyps), "references": sum(map(len, references)), "beam": args.beam,
              "seconds": round(seconds, 3)}
    if captioner.meta.get("task", {}).get("task") == "scenes" and args.split and not args.captions:
        result.update(scene_attention(args, captioner))
    if args.json:
        print(json.dumps(result))
        return 0
    print("  ".join(f"BLEU-{n} {scores[f'bleu{n}']:.2f}" for n in range(1, 5))
          + f"  ({len(hyps)} images, {result['references']} references, beam {args.beam}, {seconds:.1f} s)")
    if result.get("attention_words") == 0:
        print("attention on the named objects: not measured (no caption named an object correctly)")
    elif "attention_mass" in result:
        print(f"attention on the named objects: {result['attention_mass']:.3f} of the mass (uniform attention: "
              f"{result['attention_chance']:.3f}; {result['attention_words']} colour and shape words)")
    return 0
