"""`attnlab train` end to end: task -> tokenizer -> model -> Trainer, and `--resume` of the same run.

Defaults depend on the task: a generated task trains a tiny model in a couple of minutes on a CPU;
Multi30k trains the `small` Transformer with a joint 8k BPE vocabulary.
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from attnlab.config import TRANSFORMER_PRESETS, TransformerConfig
from attnlab.data.batching import encode_pairs
from attnlab.models.registry import build_model, family
from attnlab.run_dir import load_tokenizers, read_run_config, write_run_config
from attnlab.tasks import TaskSpec, build_tokenizers, load_corpus
from attnlab.training.config import TrainConfig
from attnlab.training.loop import Trainer, ValidationSet
from attnlab.translate import DecodeConfig, Translator

# Per-task defaults: model preset, vocabulary, and training settings (all overridable).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "multi30k": {"preset": "small", "vocab_size": 8000, "src_lang": "de", "tgt_lang": "en",
                 "model": {"share_embeddings": True, "dropout": 0.1},
                 "train": {"max_tokens": 6000, "warmup_steps": 1000, "lr_scale": 1.0, "eval_every": 500,
                           "eval_bleu_sentences": 1014, "average_last": 0}},
    "dates": {"preset": "tiny", "vocab_size": 400, "src_lang": "en", "tgt_lang": "de", "n_train": 20000,
              "model": {"share_embeddings": True},
              "train": {"max_tokens": 3000, "warmup_steps": 400, "lr_scale": 2.0, "eval_every": 200,
                        "eval_bleu_sentences": 300, "max_minutes": 2.0}},
    "numbers": {"preset": "tiny", "vocab_size": 400, "src_lang": "en", "tgt_lang": "de", "n_train": 20000,
                "model": {"share_embeddings": True},
                "train": {"max_tokens": 3000, "warmup_steps": 400, "lr_scale": 2.0, "eval_every": 200,
                          "eval_bleu_sentences": 300, "max_minutes": 3.0}},
    "copy": {"preset": "tiny", "vocab_size": 200, "n_train": 5000, "model": {"share_embeddings": True},
             "train": {"max_tokens": 2000, "warmup_steps": 200, "lr_scale": 2.0, "eval_every": 200,
                       "eval_bleu_sentences": 200, "max_minutes": 2.0}},
    "files": {"preset": "small", "vocab_size": 8000, "model": {"share_embeddings": True}, "train": {}},
}
TASK_DEFAULTS["reverse"] = TASK_DEFAULTS["copy"]


def _defaults(task: str) -> dict[str, Any]:
    return TASK_DEFAULTS.get(task, TASK_DEFAULTS["files"])


def _rnn_preset(task: str) -> str:
    return "small" if task in ("multi30k", "files") else "tiny"


def make_translate_fn(tokenizers: Any, device: torch.device):
    def translate(model: torch.nn.Module, sources: list[str], beam: int) -> list[str]:
        return Translator(model, tokenizers, device).translate(sources, DecodeConfig(beam=beam))

    return translate


def model_config_values(arch: str, preset: str | None, vocab_src: int, vocab_tgt: int, pad_id: int,
                        task_model: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    fam = family(arch)
    values: dict[str, Any] = {}
    if arch == "transformer":
        if preset:
            if preset not in TRANSFORMER_PRESETS:
                raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(TRANSFORMER_PRESETS)}")
            values.update(TRANSFORMER_PRESETS[preset])
        values.update(task_model)
    else:
        if getattr(args, "attention", None):
            values["attention"] = args.attention
        if "arch" in {f.name for f in dataclasses.fields(fam.config_cls)}:
            values["arch"] = arch
        if preset or hasattr(fam.config_cls, "preset"):
            base = fam.config_cls.preset(preset or "small", src_vocab_size=vocab_src, tgt_vocab_size=vocab_tgt,
                                         pad_id=pad_id, **values)
            values = base.to_dict()
    values.update(src_vocab_size=vocab_src, tgt_vocab_size=vocab_tgt, pad_id=pad_id)
    if values.get("share_embeddings") and vocab_src != vocab_tgt:
        values["share_embeddings"] = False
    return values


def train_from_args(args: argparse.Namespace) -> dict[str, Any]:
    from attnlab.commands.train import apply_overrides, default_device, parse_overrides

    out = Path(args.out)
    task_name = args.task
    if args.resume and (out / "config.json").is_file():
        task_name = read_run_config(out).get("task", {}).get("task", task_name)
    if task_name in ("scenes", "captions"):
        from attnlab.training.caption_pipeline import train_captioner

        return train_captioner(args)
    if args.arch in ("sat", "caption-transformer"):
        raise ValueError(f"--arch {args.arch} is an image captioner: train it with --task scenes or --task captions")
    device = default_device(args.device)
    overrides = parse_overrides(args.set)
    resuming = args.resume and (out / "config.json").is_file()
    if args.resume and not resuming:
        print(f"attnlab train: nothing to resume in {out}; starting a new run")
    if not args.resume and (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("step-*")):
        raise ValueError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")

    if resuming:
        meta = read_run_config(out)
        arch = meta["arch"]
        spec = TaskSpec(**{k: v for k, v in meta["task"].items() if k in TaskSpec.__dataclass_fields__})
        if args.data_dir:  # the data may have moved
            spec.data_dir = args.data_dir
        tokenizers = load_tokenizers(out, meta["tokenizer"])
        model_values = dict(meta["model"])
        train_cfg = TrainConfig.from_dict(meta["train"])
    else:
        d = _defaults(args.task)
        arch = args.arch
        spec = TaskSpec.from_args(args)
        spec.src_lang = args.src_lang or d.get("src_lang", "de")
        spec.tgt_lang = args.tgt_lang or d.get("tgt_lang", "en")
        spec.n_train = args.n_train or d.get("n_train", spec.n_train)
        if getattr(args, "max_value", None) and spec.task == "numbers":
            spec.extra = {"max_value": args.max_value}
        if args.seed is not None:
            spec.seed = args.seed
        tokenizers = None
        train_values = TrainConfig().to_dict()
        train_values.update(d.get("train", {}))
        if args.seed is not None:
            train_values["seed"] = args.seed
        train_cfg = TrainConfig.from_dict(train_values)
        model_values = {}

    # command-line budget flags apply to new and resumed runs alike
    train_values = train_cfg.to_dict()
    if not resuming and args.max_minutes is None and (args.max_steps or args.max_epochs):
        train_values["max_minutes"] = 0.0  # an explicit step/epoch budget replaces the task's default time budget
    for flag in ("max_minutes", "max_steps", "max_epochs"):
        if getattr(args, flag) is not None:
            train_values[flag] = getattr(args, flag)
    train_cfg = TrainConfig.from_dict(train_values)

    corpus = load_corpus(spec)
    if tokenizers is None:
        d = _defaults(args.task)
        tokenizers = build_tokenizers(corpus, args.vocab_size or d["vocab_size"], joint=not args.separate_vocab)
        out.mkdir(parents=True, exist_ok=True)
        tokenizers.save(out)
        preset = args.preset or (d["preset"] if arch == "transformer" else _rnn_preset(args.task))
        model_values = model_config_values(arch, preset,
                                           tokenizers.src.vocab_size, tokenizers.tgt.vocab_size,
                                           tokenizers.tgt.pad_id, d.get("model", {}) if arch == "transformer" else {},
                                           args)
    fields = {f.name for f in dataclasses.fields(family(arch).config_cls)}
    train_cfg = apply_overrides(train_cfg, model_values, overrides, fields)
    model = build_model(arch, model_values)
    cfg_obj = family(arch).config_cls.from_dict(model_values)
    write_run_config(out, arch, cfg_obj.to_dict(), spec.to_dict(), train_cfg.to_dict(),
                     {"kind": "subword", "joint": tokenizers.joint},
                     {"command": "attnlab " + shlex.join(getattr(args, "argv", None) or sys.argv[1:])})

    train_examples = encode_pairs(corpus.train, tokenizers, max_len=train_cfg.max_len)
    valid = ValidationSet(
        examples=encode_pairs(corpus.valid, tokenizers, max_len=train_cfg.max_len),
        sources=[s for s, _ in corpus.valid],
        references=[t for _, t in corpus.valid],
    )
    n_params = sum(p.numel() for p in model.parameters())
    if not args.no_progress:
        print(f"attnlab train: {arch} with {n_params / 1e6:.2f}M parameters on {spec.task} "
              f"({len(train_examples)} training pairs, vocab {tokenizers.src.vocab_size}/{tokenizers.tgt.vocab_size}), "
              f"device {device}, run dir {out}")
    trainer = Trainer(model, train_examples, valid, train_cfg, out, device,
                      translate_fn=make_translate_fn(tokenizers, device),
                      d_model=getattr(cfg_obj, "d_model", None) or getattr(cfg_obj, "d_hidden", 512),
                      progress=not args.no_progress)
    summary = trainer.fit(resume=resuming)
    summary.update(run_dir=str(out), parameters=n_params, task=spec.task, arch=arch)
    return summary


__all__ = ["train_from_args", "TASK_DEFAULTS", "model_config_values", "TransformerConfig"]
