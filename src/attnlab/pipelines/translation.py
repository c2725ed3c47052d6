"""`attnlab train` end to end: task -> tokenizer -> model -> Trainer, and `--resume` of the same run.

Defaults depend on the task: a generated task trains a tiny model in a couple of minutes on a CPU;
Multi30k trains the `small` Transformer with a joint 8k BPE vocabulary.

Place in the layering: applications; imports only from training and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch

from attnlab.config import TRANSFORMER_PRESETS, TransformerConfig
from attnlab.data.batching import encode_pairs
from attnlab.pipelines.captioning import CAPTION_TASKS
from attnlab.models.registry import build_model, family, supports
from attnlab.run_dir import command_record, load_tokenizers, read_run_config, write_run_config
from attnlab.data.binarized import BinarizedPairs, open_manifest
from attnlab.data.prepare import PrepareConfig, prepare_dataset, read_texts
from attnlab.data.tokenizer import TokenizerPair
from attnlab.tasks import PREPARED, TRANSLATION_TASKS, TaskSpec, build_tokenizers, corpus_sources, load_corpus
from attnlab.training.config import TrainConfig, coerce
from attnlab.training.distributed import is_main_process, on_rank0, process_group
from attnlab.training.loop import Trainer, ValidationSet
from attnlab.translate import DecodeConfig, Translator

# Per-task defaults: model preset, vocabulary, and training settings (all overridable).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "multi30k": {"preset": "small", "vocab_size": 8000, "src_lang": "de", "tgt_lang": "en",
                 "model": {"share_embeddings": True, "dropout": 0.1},
                 # tuned for an hour on a 2-core CPU (~1,200 steps): a short warm-up reaches the peak rate
                 # early; smaller batches give more updates (measured: test BLEU, benchmarks/results/)
                 "train": {"max_tokens": 4500, "warmup_steps": 500, "lr_scale": 0.8, "eval_every": 500,
                           "eval_bleu_sentences": 1014, "average_last": 0},
                 # RNNs step several times slower per token: smaller batches give them more updates
                 # within a time budget, and a shorter warm-up reaches the peak rate early
                 "rnn_train": {"max_tokens": 2500, "warmup_steps": 500}},
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
    "files": {"preset": "small", "vocab_size": 8000, "model": {"share_embeddings": True}, "train": {},
              "rnn_train": {"max_tokens": 2500, "warmup_steps": 500}},
}
# the paper's base recipe (section 5): shared 37k BPE, ~25,000 source + ~25,000 target tokens per step (here
# 6,250 padded tokens x 4 accumulated batches on one process; with 8 processes use accum_steps=1 and
# max_tokens=3125), 4,000 warm-up steps, the last 5 checkpoints averaged; pairs cleaned as fairseq's recipe
TASK_DEFAULTS["wmt14"] = {"preset": "base", "vocab_size": 37000, "src_lang": "en", "tgt_lang": "de", "max_ratio": 1.5,
                          "model": {"share_embeddings": True},
                          "train": {"max_tokens": 6250, "accum_steps": 4, "warmup_steps": 4000, "eval_every": 1000,
                                    "eval_bleu_sentences": 500, "average_last": 5, "keep_last": 5}}
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
                        task_model: dict[str, Any], args: argparse.Namespace,
                        bos_id: int | None = None) -> dict[str, Any]:
    fam = family(arch)
    values: dict[str, Any] = {}
    if arch == "transformer":
        if preset:
            if preset not in TRANSFORMER_PRESETS:
                raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(TRANSFORMER_PRESETS)}")
            values.update(TRANSFORMER_PRESETS[preset])
        if bos_id is not None:  # a new model starts decoding as Marian does, so CTranslate2 converts it exactly
            values["zero_start_id"] = bos_id  # (TransformerConfig.zero_start_id; --set zero_start_id=none: learned)
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




def check_args(args: argparse.Namespace) -> None:
    """Command-line values that cannot work, as one-line errors before anything is built or written."""
    if not str(args.out).strip():
        raise ValueError("--out is empty; name the run directory")
    if args.task is None:
        args.task = "files" if getattr(args, "data_bin", None) else "dates"
    known = (*TRANSLATION_TASKS, *CAPTION_TASKS)
    if not args.resume and args.task not in known:
        raise ValueError(f"unknown task {args.task!r}; choose from {', '.join(known)}")
    for flag in ("n_train", "vocab_size", "max_value", "tokenizer_sample", "workers"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if getattr(args, "max_ratio", None) is not None and not args.max_ratio >= 1:
        raise ValueError(f"--max-ratio must be >= 1, got {args.max_ratio}")
    if args.arch is not None:
        family(args.arch)  # unknown architecture -> its one-line error
        if not args.resume and (args.task in CAPTION_TASKS) != supports(args.arch, "captioning"):
            wanted = "sat or caption-transformer" if args.task in CAPTION_TASKS else "transformer, rnn or rnn-attn"
            raise ValueError(f"--arch {args.arch} does not fit --task {args.task}; use --arch {wanted}")


def check_run_dir(args: argparse.Namespace) -> dict[str, Any] | None:
    """The saved config.json when --resume finds a run in --out (None for a new run). Run on rank 0 only."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a run directory")
    if args.resume and (out / "config.json").is_file():
        return read_run_config(out)
    if args.resume:
        print(f"attnlab train: nothing to resume in {out}; starting a new run")
    if not args.resume and (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("step-*")):
        raise ValueError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    return None


def train_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume) as the command line asks; under torchrun, as one rank of a DDP run."""
    check_args(args)
    with process_group(args.device) as device:
        meta = on_rank0(lambda: check_run_dir(args))  # decided once, before any process writes
        task_name = (meta or {}).get("task", {}).get("task", args.task)
        if task_name in CAPTION_TASKS:
            from attnlab.pipelines.captioning import train_captioner

            return train_captioner(args, device, meta)
        return _train_translator(args, device, meta)


def _train_translator(args: argparse.Namespace, device: torch.device, meta: dict[str, Any] | None) -> dict[str, Any]:
    from attnlab.training.config import apply_overrides, parse_overrides

    out = Path(args.out)
    overrides = parse_overrides(args.set)
    resuming = meta is not None
    if resuming:
        arch = meta["arch"]
        spec = TaskSpec(**{k: v for k, v in meta["task"].items() if k in TaskSpec.__dataclass_fields__})
        if args.data_dir:  # the data may have moved
            spec.data_dir = args.data_dir
        tokenizers = on_rank0(lambda: load_tokenizers(out, meta["tokenizer"]))
        model_values = dict(meta["model"])
        train_cfg = TrainConfig.from_dict(meta["train"])
    else:
        d = _defaults(args.task)
        arch = args.arch or "transformer"
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
        if arch in ("rnn", "rnn-attn"):
            train_values.update(d.get("rnn_train", {}))
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

    if spec.task in PREPARED:  # a binarized dataset, prepared once (on rank 0) and memory-mapped by every rank
        max_len = int(coerce(overrides["max_len"], 0)) if "max_len" in overrides else train_cfg.max_len
        data_dir, tokenizers = _prepared(args, spec, out, max_len, tokenizers)
        spec.data_bin = str(data_dir)
        corpus = None
    else:
        corpus = load_corpus(spec)  # every rank reads the data (the same files on every machine)
    if tokenizers is None:
        d = _defaults(args.task)

        def new_tokenizers() -> Any:
            assert corpus is not None  # trained once, on rank 0, and sent to the other ranks
            toks = build_tokenizers(corpus, args.vocab_size or d["vocab_size"], joint=not args.separate_vocab)
            out.mkdir(parents=True, exist_ok=True)
            toks.save(out)
            return toks

        tokenizers = on_rank0(new_tokenizers)
    if not resuming:
        d = _defaults(args.task)
        preset = args.preset or (d["preset"] if arch == "transformer" else _rnn_preset(args.task))
        model_values = model_config_values(arch, preset,
                                           tokenizers.src.vocab_size, tokenizers.tgt.vocab_size,
                                           tokenizers.tgt.pad_id, d.get("model", {}) if arch == "transformer" else {},
                                           args, bos_id=tokenizers.tgt.bos_id)
    fields = {f.name for f in dataclasses.fields(family(arch).config_cls)}
    train_cfg = apply_overrides(train_cfg, model_values, overrides, fields)
    torch.manual_seed(train_cfg.seed)  # the same initial weights for the same seed (and on every rank)
    model = build_model(arch, model_values)
    cfg_obj = family(arch).config_cls.from_dict(model_values)
    on_rank0(lambda: write_run_config(out, arch, cfg_obj.to_dict(), spec.to_dict(), train_cfg.to_dict(),
                                      {"kind": "subword", "joint": tokenizers.joint},
                                      command_record(args, meta)))

    if corpus is None:
        train_examples: Any = BinarizedPairs(Path(spec.data_bin), "train")
        sources, references = read_texts(spec.data_bin, "valid")
        examples = [_truncated(e, train_cfg.max_len) for e in BinarizedPairs(Path(spec.data_bin), "valid")] \
            if sources else []
        valid = ValidationSet(examples=examples, sources=sources, references=references)
    else:
        train_examples = encode_pairs(corpus.train, tokenizers, max_len=train_cfg.max_len)
        valid = ValidationSet(
            examples=encode_pairs(corpus.valid, tokenizers, max_len=train_cfg.max_len),
            sources=[s for s, _ in corpus.valid],
            references=[t for _, t in corpus.valid],
        )
    n_params = sum(p.numel() for p in model.parameters())
    if not args.no_progress and is_main_process():
        print(f"attnlab train: {arch} with {n_params / 1e6:.2f}M parameters on {spec.task} "
              f"({len(train_examples)} training pairs, vocab {tokenizers.src.vocab_size}/{tokenizers.tgt.vocab_size}), "
              f"device {device}, run dir {out}")
    trainer = Trainer(model, train_examples, valid, train_cfg, out, device,
                      translate_fn=make_translate_fn(tokenizers, device),
                      d_model=getattr(cfg_obj, "d_model", None) or getattr(cfg_obj, "d_hidden", 512),
                      progress=not args.no_progress)
    summary = trainer.fit(resume=resuming)
    summary.update(run_dir=str(out), parameters=n_params, task=spec.task, arch=arch)
    # beam and length penalty, on (at most) the validation sentences that BLEU validation decoded
    n_tune = min(train_cfg.decode_tuning_sentences, train_cfg.eval_bleu_sentences)
    if n_tune and valid.sources:
        from attnlab.pipelines.decode_tuning import tune_decoding

        tuned = on_rank0(lambda: tune_decoding(out, valid.sources, valid.references, device, n_tune))
        if tuned:
            summary["decode"] = {k: tuned[k] for k in ("beam", "length_penalty", "valid_bleu")}
    return summary


def _truncated(example: tuple[list[int], list[int]], max_len: int) -> tuple[list[int], list[int]]:
    """A validation example cut to max_len tokens (its loss only; BLEU uses the whole sentence)."""
    src, tgt = example
    if len(src) <= max_len and len(tgt) <= max_len:
        return example
    return src[: max_len - 1] + src[-1:], tgt[: max_len - 1] + tgt[-1:]


def prepare_config(args: argparse.Namespace, spec: TaskSpec, max_len: int) -> PrepareConfig:
    d = _defaults(spec.task)
    return PrepareConfig(vocab_size=getattr(args, "vocab_size", None) or d["vocab_size"],
                         joint=not getattr(args, "separate_vocab", False),
                         tokenizer_sample=getattr(args, "tokenizer_sample", None) or PrepareConfig.tokenizer_sample,
                         max_len=max_len, max_ratio=getattr(args, "max_ratio", None) or d.get("max_ratio", 9.0),
                         seed=spec.seed, workers=getattr(args, "workers", None) or 0)


def _prepared(args: argparse.Namespace, spec: TaskSpec, out: Path, max_len: int,
              tokenizers: Any) -> tuple[Path, Any]:
    """The prepared dataset of the run (and its tokenizers): --data-bin, the run's own (RUN/data, prepared
    here on first use, resumed if a preparation was killed), or the one a resumed run recorded."""
    data_dir = Path(getattr(args, "data_bin", None) or spec.data_bin or out / "data").resolve()

    def prepare() -> None:
        done = (data_dir / "manifest.json").is_file()
        if done and (tokenizers is not None or getattr(args, "data_bin", None)):  # made by attnlab prepare, or resumed
            open_manifest(data_dir, tokenizers.fingerprint() if tokenizers is not None else None)
            return
        say = (lambda msg: print(f"attnlab prepare: {msg}", flush=True)) if not args.no_progress else (lambda msg: None)
        prepare_dataset(corpus_sources(spec), data_dir, prepare_config(args, spec, max_len), tokenizers, log=say)

    on_rank0(prepare)
    if tokenizers is None:
        tokenizers = TokenizerPair.load(data_dir)
        on_rank0(lambda: tokenizers.save(out))
    return data_dir, tokenizers


__all__ = ["train_from_args", "TASK_DEFAULTS", "model_config_values", "TransformerConfig"]
