"""`attnlab train --task scenes|captions`: image captioning on the same Trainer as translation.

- scenes:   generated pictures of coloured shapes with captions such as "a red circle left of a blue
            square" (no download; trains in minutes on a CPU) — the embedded default for captioning.
- captions: your images with captions: a COCO-format captions JSON (--coco-json, --image-dir) or the
            flat TSV of ../shared/data/coco_mini (--data-dir DIR or --captions-tsv FILE).
The vocabulary is word-level (attnlab.data.word_vocab), saved as RUN/vocab.json.

Place in the layering: applications; imports only from training and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnlab.data.batching import Batch, pad_to_tensor
from attnlab.models.captioning import CAPTION_ARCHS
from attnlab.models.registry import build_model, family
from attnlab.run_dir import command_record, load_tokenizers, write_run_config
from attnlab.training.config import TrainConfig
from attnlab.training.distributed import is_main_process, on_rank0
from attnlab.training.loop import Trainer, ValidationSet

CAPTION_TASKS = ("scenes", "captions")
DEFAULTS = {
    # alpha_c = 0: the doubly stochastic regulariser asks every region to be looked at about once per
    # caption (sum_t alpha_ti ~ 1); with 64 regions, 11 words and a picture that is mostly background it
    # pulls the attention off the objects (attention mass on the objects named, 3-minute runs: 0.30 with
    # alpha_c = 1, 0.67 with 0; README). COCO keeps the paper's alpha_c = 1.
    # threads = 1: the tensors are small, and where other work shares the CPU, OpenMP threads waiting on
    # each other cost more than they gain (40 steps: 12 s with one thread, 48 s with two, on a busy 2-core box)
    "scenes": {"preset": "tiny", "n_train": 6000, "model": {"alpha_c": 0.0},
               "train": {"max_tokens": 768, "warmup_steps": 200, "lr_scale": 1.0, "eval_every": 250,
                         "eval_bleu_sentences": 200, "max_minutes": 3.0, "label_smoothing": 0.0, "threads": 1}},
    "captions": {"preset": "small", "model": {},
                 "train": {"max_tokens": 600, "warmup_steps": 500, "eval_every": 200, "eval_bleu_sentences": 200,
                           "label_smoothing": 0.1, "max_minutes": 10.0}},  # a budget: --max-minutes to change
}


def collate_images(examples: list[tuple[Tensor, list[int]]], pad_id: int) -> Batch:
    images = torch.stack([img for img, _ in examples])
    tgt = pad_to_tensor([t for _, t in examples], pad_id)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    return Batch(images, tgt_in, tgt_out, int((tgt_out != pad_id).sum()), pad_id)


def scene_splits(task: dict[str, Any], image_size: int) -> tuple[list, list, list]:
    """The generated scenes of a `--task scenes` run: train (n_train), valid (200) and test (200)."""
    from attnlab.data.images import scenes_dataset

    n = task.get("n_train") or DEFAULTS["scenes"]["n_train"]
    scenes = scenes_dataset(n + 400, seed=task.get("seed", 0), size=image_size)
    return scenes[:n], scenes[n:n + 200], scenes[n + 200:]


def load_caption_data(task: dict[str, Any], image_size: int):
    """-> (train, valid, test) lists of (image tensor, [captions])."""
    from attnlab.data.images import load_image, read_captions_tsv, read_coco_json, scene_tensors

    if task["task"] == "scenes":  # trained on the caption drawn, scored against both ways of saying it
        train, valid, test = scene_splits(task, image_size)
        return ([(image, [scene.caption]) for image, scene in zip(scene_tensors(train), train)],
                *([(image, scene.captions) for image, scene in zip(scene_tensors(split), split)]
                  for split in (valid, test)))
    if task.get("coco_json"):
        examples = read_coco_json(task["coco_json"], task["image_dir"])
    else:
        tsv = task.get("captions_tsv") or (str(Path(task["data_dir"]) / "captions.tsv") if task.get("data_dir") else None)
        if not tsv:
            raise ValueError("--task captions needs --data-dir DIR (with captions.tsv), --captions-tsv FILE, "
                             "or --coco-json FILE --image-dir DIR")
        examples = read_captions_tsv(tsv)
    if not examples:
        raise ValueError("no captioned images found")
    data = [(load_image(ex.image_path, image_size), ex.captions) for ex in examples]
    random.Random(task.get("seed", 0)).shuffle(data)
    n_hold = max(1, len(data) // 10)
    return data[2 * n_hold:], data[:n_hold], data[n_hold:2 * n_hold]


def train_captioner(args: argparse.Namespace, device: torch.device, meta: dict[str, Any] | None) -> dict[str, Any]:
    """Called by attnlab.pipelines.translation.train_from_args (inside the process group; meta = the saved
    config.json when resuming, checked by rank 0)."""
    from attnlab.training.config import apply_overrides, parse_overrides
    from attnlab.data.word_vocab import WordVocab
    from attnlab.metrics.caption_bleu import corpus_bleu_multi

    out = Path(args.out)
    resuming = meta is not None
    if resuming:
        arch, task, model_values = meta["arch"], meta["task"], dict(meta["model"])
        train_cfg = TrainConfig.from_dict(meta["train"])
        vocab = on_rank0(lambda: load_tokenizers(out, meta["tokenizer"]))
    else:
        arch = args.arch or "sat"
        d = DEFAULTS[args.task]
        task = {"task": args.task, "data_dir": args.data_dir, "seed": args.seed or 0,
                "n_train": args.n_train or d.get("n_train"), "captions_tsv": getattr(args, "captions_tsv", None),
                "coco_json": getattr(args, "coco_json", None), "image_dir": getattr(args, "image_dir", None)}
        values = TrainConfig().to_dict()
        values.update(d["train"])
        train_cfg = TrainConfig.from_dict(values)
        cfg_cls = family(arch).config_cls
        model_values = cfg_cls.preset(args.preset or d["preset"], vocab_size=4).to_dict()
        model_values.update({k: v for k, v in d["model"].items() if k in model_values})
        vocab = None
    values = train_cfg.to_dict()
    if not resuming and args.max_minutes is None and (args.max_steps or args.max_epochs):
        values["max_minutes"] = 0.0
    for flag in ("max_minutes", "max_steps", "max_epochs"):
        if getattr(args, flag) is not None:
            values[flag] = getattr(args, flag)
    train_cfg = TrainConfig.from_dict(values)
    fields = set(model_values)
    train_cfg = apply_overrides(train_cfg, model_values, parse_overrides(args.set), fields)

    train, valid, _ = load_caption_data(task, model_values["image_size"])
    if vocab is None:
        def new_vocab() -> WordVocab:  # built once, on rank 0, and sent to the other ranks
            built = WordVocab.build([c for _, caps in train for c in caps])
            out.mkdir(parents=True, exist_ok=True)
            built.save(out / "vocab.json")
            return built

        vocab = on_rank0(new_vocab)
        model_values["vocab_size"] = vocab.vocab_size
        model_values["pad_id"] = vocab.pad_id
    torch.manual_seed(train_cfg.seed)  # the same initial weights for the same seed (and on every rank)
    model = build_model(arch, model_values)
    cfg_obj = family(arch).config_cls.from_dict(model_values)
    on_rank0(lambda: write_run_config(out, arch, cfg_obj.to_dict(), task, train_cfg.to_dict(),
                                      {"kind": "word", "file": "vocab.json"},
                                      command_record(args, meta)))

    def encode(caption: str) -> list[int]:
        return [vocab.bos_id] + vocab.encode(caption)[: train_cfg.max_len - 2] + [vocab.eos_id]

    examples = [(img, encode(c)) for img, caps in train for c in caps]
    valid_set = ValidationSet(examples=[(img, encode(caps[0])) for img, caps in valid],
                              sources=[img for img, _ in valid], references=[caps for _, caps in valid])

    def caption_fn(m: torch.nn.Module, images: list[Tensor], beam: int) -> list[str]:
        from attnlab.caption import Captioner

        return Captioner(m, vocab, device).captions(torch.stack(list(images)), beam)

    def score_fn(hyps: list[str], refs: list[list[str]]) -> dict[str, float]:
        scores = corpus_bleu_multi(hyps, refs)
        return {"bleu": round(scores["bleu4"], 2), **{k: round(v, 2) for k, v in scores.items()}}

    if not args.no_progress and is_main_process():
        n_params = sum(p.numel() for p in model.parameters())
        print(f"attnlab train: {arch} with {n_params / 1e6:.2f}M parameters on {task['task']} "
              f"({len(train)} images, {len(examples)} captions, vocab {vocab.vocab_size}), device {device}, run dir {out}")
    trainer = Trainer(model, examples, valid_set, train_cfg, out, device, translate_fn=caption_fn,
                      collate_fn=collate_images, d_model=model_values.get("d_model") or model_values.get("d_hidden", 256),
                      progress=not args.no_progress, score_fn=score_fn)
    summary = trainer.fit(resume=resuming)
    summary.update(run_dir=str(out), task=task["task"], arch=arch)
    return summary
